"""Default values the settings use and the CLI's help shows, in a module of no imports so that
``--help`` names them without loading the settings' libraries (pydantic, Arrow)."""

DB = "data/marketpipe.duckdb"
BATCH_SIZE = 250_000  # records per batch read, checked and written
MAX_QUARANTINE_RATIO = 0.05  # a chunk quarantining a larger share fails
CHUNK_DAYS = 1  # days per API download
STYPE_IN = "raw_symbol"
STYPES = ("raw_symbol", "instrument_id", "parent", "continuous", "smart")
LOG_LEVEL = "ERROR"  # the console's; the log file takes INFO and above
MAX_CONCURRENT_DOWNLOADS = 50
DUCKDB_MEMORY_LIMIT = "128MB"  # DuckDB's cap while ingesting (README, "Measurements behind the code")
# What a day argument may be: a date, or relative (UTC): today, yesterday, N days ago, and for
# a job's start, ``last``: the day after the last day the job has fully stored.
DAY_FORMS = "YYYY-MM-DD, today, yesterday, -Nd or last"
READ_DAY_FORMS = "YYYY-MM-DD, today, yesterday or -Nd"  # days to read: ``last`` is a job's
