"""A DuckDB catalog over an output root: one VIEW per table contract, and the lineage of a triplet.

``build_catalog(out)`` writes ``<out>/export/catalog.duckdb`` holding no data, only views over
the Parquet files (absolute paths, so it works from any working directory):

- a per-source table (``roi_set``, ``caption_batch``, ``triplets``, ...) reads the glob
  ``<out>/<folder>/[!_.]*.parquet`` with ``union_by_name=true``: a new source's file is seen
  without a rebuild, and an older file without a newer optional column still reads (as NULLs);
- a global table (``knowledge_corpus``, ``knowledge_docstore``, ``medtrinity_dataset`` = the
  export's ``triplets.parquet``, ...) reads its one file;
- ``lineage``: one row per exported triplet with its manifest row, preprocessed image, ROI,
  retrieval, caption and quality row; ``lineage_passages``: one row per retrieved passage of a
  triplet (rank, chunk, score, title, text);
- ``catalog_tables``: what each view reads, and the tables that had no file yet.

Query it with ``medtrinity sql "SELECT ..."`` or, equivalently,
``python -m medtrinity_assets.export.catalog --out OUT "SELECT ..."``. Example queries::

    SELECT source, count(*) FROM medtrinity_dataset GROUP BY ALL;
    SELECT triplet_id, relpath, roi_origin, area_fraction, passed FROM lineage LIMIT 5;
    SELECT rank, title, score FROM lineage_passages WHERE triplet_id = '...' ORDER BY rank;
    SELECT origin, avg(judge_mean) FROM caption_quality q JOIN roi_set r USING (record_id, roi_id) GROUP BY ALL;
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import duckdb

from medtrinity_assets.core.storage import temp_file
from medtrinity_assets.core.tables import CONTRACTS, MEDTRINITY_DATASET, TableContract

CATALOG_FILE = "catalog.duckdb"
EXIT_OK, EXIT_SQL_ERROR = 0, 2
PER_SOURCE_GLOB = "[!_.]*.parquet"  # not _global.parquet, not .tmp files, not hidden ones


def default_catalog_path(out: str | Path) -> Path:
    """``<out>/export/catalog.duckdb``."""
    return MEDTRINITY_DATASET.path(out).parent / CATALOG_FILE


def _sql_str(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _files(c: TableContract, out: Path) -> list[Path]:
    """The Parquet files a contract's view reads now."""
    if c.scope == "global":
        p = c.path(out)
        return [p] if p.is_file() else []
    folder = out / (c.folder or c.name)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if p.is_file() and not p.name.startswith(("_", ".")))


def _location(c: TableContract, out: Path) -> str:
    return str(c.path(out) if c.scope == "global" else out / (c.folder or c.name) / PER_SOURCE_GLOB)


def table_files(out: str | Path) -> dict[str, list[Path]]:
    """Every contract's current Parquet files under ``out`` (empty list: not materialized yet)."""
    root = Path(out).resolve()
    return {name: _files(c, root) for name, c in CONTRACTS.items()}


def _create_views(con: duckdb.DuckDBPyConnection, out: Path) -> tuple[list[str], list[str]]:
    made, skipped = [], []
    con.execute("CREATE TABLE catalog_tables (name VARCHAR, scope VARCHAR, location VARCHAR, files INTEGER, "
                "description VARCHAR)")
    for name, c in CONTRACTS.items():
        files = _files(c, out)
        where = _location(c, out)
        if not files:
            skipped.append(name)
            con.execute("INSERT INTO catalog_tables VALUES (?, ?, ?, 0, ?)", [name, c.scope, where, c.description])
            continue
        con.execute(f"CREATE VIEW {_ident(name)} AS SELECT * FROM read_parquet({_sql_str(where)}, union_by_name=true)")
        con.execute("INSERT INTO catalog_tables VALUES (?, ?, ?, ?, ?)", [name, c.scope, where, len(files), c.description])
        made.append(name)
    return made, skipped


def _lineage_sql(views: set[str]) -> str | None:
    """One row per exported triplet with every upstream row it came from (joins only the views
    that exist)."""
    base = "medtrinity_dataset" if "medtrinity_dataset" in views else "triplets" if "triplets" in views else None
    if base is None:
        return None
    cols = ["t.triplet_id", "t.source", "t.record_id", "t.roi_id", "t.inputs_hash", "t.image_file", "t.label",
            "t.origin", "t.split", "t.backend", "t.model"]
    joins = []
    parts = {
        "source_manifest": ("m", "m.record_id = t.record_id",
                            ["m.relpath", "m.status AS manifest_status", "m.labels AS manifest_labels"]),
        "preprocessed_images": ("i", "i.record_id = t.record_id", ["i.image_path AS preprocessed_image", "i.window"]),
        "roi_set": ("r", "r.record_id = t.record_id AND r.roi_id = t.roi_id",
                    ["r.origin AS roi_origin", "r.area_fraction", "r.horizontal", "r.vertical"]),
        "retrieved_knowledge": ("k", "k.record_id = t.record_id AND k.roi_id = t.roi_id",
                                ["k.query AS retrieval_query", "k.chunk_ids", "k.scores"]),
        "caption_batch": ("c", "c.record_id = t.record_id AND c.roi_id = t.roi_id AND c.inputs_hash = t.inputs_hash",
                          ["c.prompt_version AS caption_prompt_version", "c.created_at AS captioned_at"]),
        "caption_quality": ("q", "q.record_id = t.record_id AND q.roi_id = t.roi_id AND q.inputs_hash = t.inputs_hash",
                            ["q.consistent", "q.phi_found", "q.judge_mean", "q.passed", "q.issues"]),
    }
    for view, (alias, on, extra) in parts.items():
        if view in views:
            joins.append(f"LEFT JOIN {view} {alias} ON {on}")
            cols.extend(extra)
    return f"SELECT {', '.join(cols)} FROM {base} t " + " ".join(joins)


def _passages_sql(views: set[str]) -> str | None:
    if "lineage" not in views or "retrieved_knowledge" not in views:
        return None
    unnested = ("SELECT l.triplet_id, l.source, l.record_id, l.roi_id, u.rank, l.chunk_ids[u.rank] AS chunk_id, "
                "l.scores[u.rank] AS score FROM lineage l, "
                "LATERAL (SELECT unnest(generate_series(1, len(coalesce(l.chunk_ids, []))::BIGINT)) AS rank) u")
    docs = next((v for v in ("knowledge_docstore", "knowledge_corpus") if v in views), None)
    if docs is None:
        return unnested
    return (f"SELECT p.*, d.corpus, d.doc_id, d.title, d.text FROM ({unnested}) p "
            f"LEFT JOIN {docs} d ON d.chunk_id = p.chunk_id")


def _write(db: Path, out: Path) -> tuple[list[str], list[str]]:
    with duckdb.connect(str(db)) as con:
        made, skipped = _create_views(con, out)
        views = set(made)
        for name, sql in (("lineage", _lineage_sql), ("lineage_passages", _passages_sql)):
            body = sql(views)
            if body is not None:
                con.execute(f"CREATE VIEW {name} AS {body}")
                views.add(name)
                made.append(name)
        con.execute("CHECKPOINT")
    return made, skipped


def build_catalog(out: str | Path, db_path: str | Path | None = None) -> Path:
    """Write the DuckDB catalog of output root ``out`` (default ``<out>/export/catalog.duckdb``)
    atomically (built beside it under a temporary name, then renamed); returns its path.

    ``catalog_tables`` in the catalog lists every contract, with ``files = 0`` for those skipped
    because they have no file yet (see :func:`catalog_report`)."""
    root = Path(out).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no output root at {root}")
    db = Path(db_path) if db_path else default_catalog_path(out)  # returned as given; views use `root`
    db.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(db)
    os.close(fd)
    Path(tmp).unlink()  # DuckDB creates its own file
    try:
        _write(Path(tmp), root)
        os.replace(tmp, db)
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + ".wal").unlink(missing_ok=True)
    return db


def catalog_report(db_path: str | Path) -> tuple[list[str], list[str]]:
    """``(views, skipped tables)`` of a catalog: skipped ones had no Parquet file when it was built."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]
        skipped = [r[0] for r in con.execute("SELECT name FROM catalog_tables WHERE files = 0 ORDER BY 1").fetchall()]
    return views, skipped


def catalog_is_stale(out: str | Path, db_path: str | Path | None = None) -> bool:
    """True when the catalog is missing, older than a table file of ``out``, built before a table
    got its first file, or built for another location of the output root."""
    root = Path(out).resolve()
    db = Path(db_path) if db_path else default_catalog_path(root)
    if not db.is_file():
        return True
    built = db.stat().st_mtime
    present = {name for name, files in table_files(root).items() if files}
    if any(p.stat().st_mtime > built for files in table_files(root).values() for p in files):
        return True
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            rows = con.execute("SELECT name, location, files FROM catalog_tables").fetchall()
    except duckdb.Error:
        return True
    recorded = {name for name, _, n in rows if n}
    return recorded != present or not all(loc.startswith(str(root) + os.sep) for _, loc, _ in rows)


def ensure_catalog(out: str | Path, db_path: str | Path | None = None) -> Path:
    """The catalog of ``out``, (re)built first when :func:`catalog_is_stale`."""
    if catalog_is_stale(out, db_path):
        return build_catalog(out, db_path)
    return Path(db_path) if db_path else default_catalog_path(out)


def _one_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines()]
    return " ".join(s for s in lines if s and not s.startswith(("LINE ", "^"))) or type(exc).__name__


def run_sql(out: str | Path, query: str, *, max_rows: int = 100, db_path: str | Path | None = None) -> int:
    """Run ``query`` on the catalog of ``out`` (refreshed when stale) and print the result as a
    table; returns 0, or 2 after one line on stderr when the query (or the catalog) fails."""
    try:
        db = ensure_catalog(out, db_path)
        with duckdb.connect(str(db), read_only=True) as con:
            rel = con.sql(query)
            if rel is None:
                print("OK")
            else:
                rel.show(max_rows=max_rows, max_width=10_000)
    except (duckdb.Error, OSError) as exc:
        print(f"medtrinity sql: {_one_line(exc)}", file=sys.stderr)
        return EXIT_SQL_ERROR
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medtrinity_assets.export.catalog --out OUT [--build] "SELECT ..."``."""
    ap = argparse.ArgumentParser(prog="python -m medtrinity_assets.export.catalog", description=__doc__.splitlines()[0])
    ap.add_argument("query", nargs="?", help="SQL to run on the catalog (omit with --build)")
    ap.add_argument("--out", required=True, help="output root")
    ap.add_argument("--db", default=None, help=f"catalog file (default <out>/export/{CATALOG_FILE})")
    ap.add_argument("--build", action="store_true", help="(re)build the catalog and list its views")
    ap.add_argument("--max-rows", type=int, default=100)
    args = ap.parse_args(argv)
    if args.build or not args.query:
        try:
            db = build_catalog(args.out, args.db)
        except OSError as exc:
            print(f"catalog: {_one_line(exc)}", file=sys.stderr)
            return EXIT_SQL_ERROR
        views, skipped = catalog_report(db)
        print(f"{db}: views {', '.join(views)}" + (f"; no file yet: {', '.join(skipped)}" if skipped else ""))
        if not args.query:
            return EXIT_OK
    return run_sql(args.out, args.query, max_rows=args.max_rows, db_path=args.db)


if __name__ == "__main__":
    raise SystemExit(main())
