"""Token shards on disk (shards.py: the one reader/writer of the format), training and evaluation windows
(windows.py) and the Parquet tables of the alignment data (tables.py)."""
