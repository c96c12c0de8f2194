"""A stable view for consumers: <data>/latest/<name>.csv always holds a dataset's current normalized file,
and latest/latest.json lists them. Hard links (no admin rights needed on NTFS), or copies where links fail;
each file is replaced atomically."""

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.layout import safe_component

MANIFEST = "latest.json"


def latest_name(identifier: str, url: str, distributions: int) -> str:
    """<identifier>.csv; a dataset with several CSV distributions adds each file's name."""
    if distributions == 1:
        return f"{safe_component(identifier)}.csv"
    stem = Path(urlsplit(url).path).stem
    return f"{safe_component(identifier)}__{safe_component(stem)}.csv"


def _place(source: Path, dest: Path) -> None:
    temp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:
        shutil.copyfile(source, temp)
    os.replace(temp, dest)


def publish(folder: Path, entries: list[dict], retired: set[str], run_id: str, now: str) -> dict:
    """Point latest/ at each entry's normalized file; entries carry identifier, title, url, modified,
    output_path, rows, sha256, released, described_by, distributions. Returns the manifest written."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    old = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {"datasets": []}
    datasets = {d["path"]: d for d in old["datasets"]}
    for entry in entries:
        name = latest_name(entry["identifier"], entry["download_url"], entry["distributions"])
        dest = folder / name
        current = datasets.get(name)
        if current and current["sha256"] == entry["sha256"] and dest.exists():
            continue
        _place(Path(entry["output_path"]), dest)
        datasets[name] = {"identifier": entry["identifier"], "title": entry["title"],
                          "version": {"modified": entry["modified"], "download_url": entry["download_url"]},
                          "rows": entry["rows"], "sha256": entry["sha256"], "path": name,
                          "released": entry["released"], "described_by": entry["described_by"], "updated_run": run_id}
    for item in datasets.values():
        item["retired"] = item["identifier"] in retired
    manifest = {"generated_at": now, "run_id": run_id, "datasets": sorted(datasets.values(), key=lambda d: d["path"])}
    temp = manifest_path.with_name(f"{MANIFEST}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", newline="")
    os.replace(temp, manifest_path)
    return manifest
