"""Environments: store entries made into something Python runs.

    farm.py         one site-packages of links into store entries
    generation.py   venv-like generations, console scripts, the atomic `current` switch
    exports.py      `gpulock env`: PYTHONPATH, PATH and the model caches for other shells
    interpreter.py  finding the target CPython on this machine
    pythons.py      CPython installed by uv into the store, and finding it there safely
"""
