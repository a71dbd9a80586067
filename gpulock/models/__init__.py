"""Models on the store: pinned files as content-addressed blobs, laid out as the caches
their clients read. Pinning, and where each file's bytes come from, belong to its source
(gpulock.sources); the pins themselves are plain data (gpulock.pins).

    blobs.py     blobs/sha256/<2>/<62>: found by hash, published once verified
    download.py  one file over HTTP into a blob, resumable  ->  ranges.py  large files in pieces
    extract.py   an archive (`extract = true`) unpacked once into trees/<sha256>
    views.py     the Hugging Face cache, ModelScope's caches, files/<project>/<model>
    sync.py      `gpulock sync` for models: fetch what is missing, lay out every view
"""
