"""Small DKAN-shaped catalogs and CSVs for the tests (header rows are real CMS header rows)."""

# Real header rows (CRLF, every field quoted; one has a comma inside quotes).
HEADER_OAS_CAHPS = (
    '"Facility ID","Facility Name","City/Town","Patients\' rating of the facility linear mean score",'
    '"Number of Sampled Patients"'
)
HEADER_WITH_COMMA = '"Facility ID","Facility Name","Measure ID","Footnote, if any","Start Date"'
HEADER_UNQUOTED_LF = "name,addr,city,state,zip,lat,lon"
# HCAHPS - Hospital, the biggest file (330-445k rows): the benchmarks' real-shaped large CSV.
HEADER_HCAHPS = (
    '"Facility ID","Facility Name","Address","City/Town","State","ZIP Code","County/Parish","Telephone Number",'
    '"HCAHPS Measure ID","HCAHPS Question","HCAHPS Answer Description","Patient Survey Star Rating",'
    '"Patient Survey Star Rating Footnote","HCAHPS Answer Percent","HCAHPS Answer Percent Footnote",'
    '"HCAHPS Linear Mean Value","Number of Completed Surveys","Number of Completed Surveys Footnote",'
    '"Survey Response Rate Percent","Survey Response Rate Percent Footnote","Start Date","End Date"'
)
HEADER_IPF = '"Facility ID","N READM-30-IPF # IPFs Better","FAPH-30 %","Rate (%)"'


def csv_bytes(header: str, rows: list[str], newline: str = "\r\n") -> bytes:
    return (newline.join([header, *rows]) + newline).encode("utf-8")


def quoted_rows(count: int, columns: int, tag: str = "") -> list[str]:
    return [",".join(f'"{tag}r{r}c{c}"' for c in range(columns)) for r in range(count)]


def item(
    identifier: str,
    modified: str,
    urls,
    *,
    title: str | None = None,
    theme=("Hospitals",),
    media_type: str | None = "text/csv",
) -> dict:
    urls = [urls] if isinstance(urls, str) else urls
    distributions = []
    for url in urls:
        dist = {"@type": "dcat:Distribution", "downloadURL": url}
        if media_type is not None:
            dist["mediaType"] = media_type
        distributions.append(dist)
    return {
        "@type": "dcat:Dataset",
        "identifier": identifier,
        "title": title or f"Dataset {identifier}",
        "modified": modified,
        "released": modified,
        "issued": "2020-01-01",
        "theme": list(theme) if not isinstance(theme, str) else theme,
        "distribution": distributions,
    }


def resource_path(identifier: str, upload: int, name: str = "File.csv") -> str:
    """The shape of real download paths: /resources/<32 hex>_<unix upload time>/<File>.csv."""
    digest = (identifier.encode().hex() * 8)[:32]
    return f"/provider-data/sites/default/files/resources/{digest}_{upload}/{name}"
