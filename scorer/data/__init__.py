"""Data I/O: Parquet, CSV and TSV read as row windows and written atomically; labels as files hold them."""
