"""Upkeep of a store: what finds and mends damage and what collects garbage sits above all
it inspects (generations, model sources, locks), the store itself below it.

    verify.py   `gpulock verify`: entries, blobs, generations, views and trees checked
    repair.py   `gpulock verify --repair`: fetch again, rebuild, drop what gpulock did not make
    gc.py       `gpulock gc`: remove what no kept generation, root or running sync references
"""
