import json

import pytest

from pipeline.catalog import CatalogError, parse_catalog
from tests.fixtures import item


def parse(items, theme="Hospitals"):
    return parse_catalog(json.dumps(items).encode(), theme)


def test_keeps_only_items_whose_theme_list_contains_the_theme_exactly():
    catalog = parse(
        [
            item("a-1", "2025-01-01", "http://h/a.csv"),
            item("b-2", "2025-01-01", "http://h/b.csv", theme=["Nursing homes"]),
            item("c-3", "2025-01-01", "http://h/c.csv", theme=["Physicians", "Hospitals"]),
            item("d-4", "2025-01-01", "http://h/d.csv", theme=["hospitals"]),
            item("e-5", "2025-01-01", "http://h/e.csv", theme="Hospitals"),
        ]
    )
    assert [v.identifier for v in catalog.versions] == ["a-1", "c-3", "e-5"]
    assert catalog.invalid == [] and catalog.items_total == 5


def test_theme_is_configurable():
    catalog = parse(
        [
            item("a-1", "2025-01-01", "http://h/a.csv"),
            item("b-2", "2025-01-01", "http://h/b.csv", theme=["Nursing homes"]),
        ],
        theme="Nursing homes",
    )
    assert [v.identifier for v in catalog.versions] == ["b-2"]


def test_takes_every_csv_distribution_and_skips_other_media_types():
    entry = item("a-1", "2025-01-01", ["http://h/one.csv", "http://h/two.csv"])
    entry["distribution"].append({"downloadURL": "http://h/data.json", "mediaType": "application/json"})
    entry["distribution"].append({"downloadURL": "http://h/three.CSV?x=1"})  # no mediaType: judged by path
    entry["distribution"].append({"downloadURL": "http://h/four.zip"})
    catalog = parse([entry])
    assert [v.url for v in catalog.versions] == ["http://h/one.csv", "http://h/two.csv", "http://h/three.CSV?x=1"]


def test_reads_the_dkan_reference_wrapped_form():
    entry = item("a-1", "2025-01-01", "http://h/a.csv")
    entry["theme"] = [{"identifier": "uuid-1", "data": "Hospitals"}]
    entry["distribution"] = [{"identifier": "uuid-2", "data": entry["distribution"][0]}]
    catalog = parse([entry])
    assert [(v.identifier, v.url) for v in catalog.versions] == [("a-1", "http://h/a.csv")]


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        (lambda e: e.pop("identifier"), "missing identifier"),
        (lambda e: e.pop("modified"), "modified"),
        (lambda e: e.update(modified="last tuesday"), "modified"),
        (lambda e: e.update(distribution=[]), "no distribution"),
        (lambda e: e["distribution"][0].pop("downloadURL"), "without downloadURL"),
        (lambda e: e["distribution"][0].update(downloadURL="file:///etc/passwd.csv"), "not http(s)"),
        (lambda e: e["distribution"][0].update(downloadURL="ftp://h/a.csv"), "not http(s)"),
        (lambda e: e["distribution"][0].update(mediaType="application/zip"), "no CSV distribution"),
    ],
)
def test_an_item_missing_what_it_needs_is_invalid_and_the_rest_go_on(change, cause):
    broken = item("bad-1", "2025-01-01", "http://h/bad.csv", title="Broken one")
    change(broken)
    catalog = parse([item("a-1", "2025-01-01", "http://h/a.csv"), broken])
    assert [v.identifier for v in catalog.versions] == ["a-1"]
    assert len(catalog.invalid) == 1 and cause in catalog.invalid[0].error
    assert catalog.invalid[0].title == "Broken one"


def test_non_object_items_are_invalid():
    catalog = parse([item("a-1", "2025-01-01", "http://h/a.csv"), "junk", 42])
    assert len(catalog.versions) == 1 and len(catalog.invalid) == 2


@pytest.mark.parametrize("payload", [b'{"items": []}', b"not json", b"\xff\xfe", b'"x"', b"null"])
def test_an_answer_that_is_not_a_json_array_is_refused(payload):
    with pytest.raises(CatalogError, match="metastore answer"):
        parse_catalog(payload, "Hospitals")


def test_identifiers_need_not_look_like_xxxx_xxxx():
    catalog = parse([item("hbf-map", "2025-01-01", "http://h/map.csv")])
    assert catalog.versions[0].identifier == "hbf-map"


def test_snapshot_round_trips():
    from pipeline.catalog import Catalog

    catalog = parse([item("a-1", "2025-01-01", "http://h/a.csv"), "junk"])
    assert Catalog.from_json(json.loads(json.dumps(catalog.to_json()))) == catalog
