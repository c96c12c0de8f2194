"""Run-log schemas of earlier releases, verbatim: upgrades are tested against what users really have on disk."""

FIRST_RELEASE = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,              -- running | succeeded | failed | interrupted
    metastore_url TEXT,
    theme TEXT,
    discovered INTEGER, downloaded INTEGER, up_to_date INTEGER, failed INTEGER, invalid INTEGER,
    report_path TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    identifier TEXT NOT NULL,
    modified TEXT NOT NULL,
    download_url TEXT NOT NULL,
    title TEXT, theme TEXT, released TEXT, described_by TEXT,
    status TEXT NOT NULL,              -- pending | done | failed
    error TEXT,
    source_path TEXT, output_path TEXT, header_map_path TEXT,
    source_encoding TEXT, rows INTEGER, bytes INTEGER, sha256 TEXT,
    first_run_id TEXT, run_id TEXT,    -- first run that saw it, last run that worked on it
    updated_at TEXT,
    PRIMARY KEY (identifier, modified, download_url)
);
CREATE TABLE IF NOT EXISTS run_items (
    run_id TEXT NOT NULL,
    identifier TEXT NOT NULL,
    modified TEXT NOT NULL,
    download_url TEXT NOT NULL,
    title TEXT,
    outcome TEXT NOT NULL,             -- queued | downloaded | up_to_date | failed | invalid
    error TEXT,
    PRIMARY KEY (run_id, identifier, modified, download_url)
);
"""

BEFORE_USER_VERSION = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,              -- running | succeeded | failed | interrupted
    metastore_url TEXT,
    theme TEXT,
    discovered INTEGER, downloaded INTEGER, up_to_date INTEGER, failed INTEGER, invalid INTEGER, retired INTEGER,
    report_path TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    identifier TEXT NOT NULL,
    modified TEXT NOT NULL,
    download_url TEXT NOT NULL,
    title TEXT, theme TEXT, released TEXT, described_by TEXT,
    status TEXT NOT NULL,              -- pending | done | failed
    error TEXT,
    source_path TEXT, output_path TEXT, header_map_path TEXT,
    source_encoding TEXT, rows INTEGER, bytes INTEGER, sha256 TEXT,
    last_modified TEXT,                -- the file's Last-Modified when downloaded
    revision TEXT NOT NULL DEFAULT '', -- set when verify found the file replaced in place
    first_run_id TEXT, run_id TEXT,    -- first run that saw it, last run that worked on it
    updated_at TEXT,
    PRIMARY KEY (identifier, modified, download_url)
);
CREATE TABLE IF NOT EXISTS run_items (
    run_id TEXT NOT NULL,
    identifier TEXT NOT NULL,
    modified TEXT NOT NULL,
    download_url TEXT NOT NULL,
    title TEXT,
    outcome TEXT NOT NULL,             -- queued | downloaded | up_to_date | failed | invalid | retired
    error TEXT,
    PRIMARY KEY (run_id, identifier, modified, download_url)
);
CREATE TABLE IF NOT EXISTS schema_changes (  -- a version whose normalized header differs from the previous one
    identifier TEXT NOT NULL,
    modified TEXT NOT NULL,
    download_url TEXT NOT NULL,
    previous_modified TEXT,
    previous_url TEXT,
    change TEXT NOT NULL,              -- JSON: added, removed, renamed, moved
    run_id TEXT NOT NULL,
    PRIMARY KEY (identifier, modified, download_url)
);
CREATE TABLE IF NOT EXISTS superseded (  -- earlier revisions of a version whose file was replaced in place
    output_path TEXT PRIMARY KEY,
    identifier TEXT NOT NULL,
    modified TEXT NOT NULL,
    download_url TEXT NOT NULL,
    revision TEXT NOT NULL,            -- '' for the first download
    run_id TEXT NOT NULL,              -- the run that stored the newer revision
    status TEXT NOT NULL               -- kept | pruned
);
CREATE TABLE IF NOT EXISTS retired (   -- datasets of the theme that left the catalog; their files stay
    identifier TEXT PRIMARY KEY,
    title TEXT,
    theme TEXT,
    retired_at TEXT NOT NULL,
    run_id TEXT NOT NULL
);
"""
