"""Vector search over study embeddings: a DuckDB table of fixed-size float arrays.

`write_vector_table` stores the study_embeddings frame as a DuckDB table (`FLOAT[dim]` columns
for the image and the report embedding), tagged with the model name and version that produced
it, and builds an HNSW index (DuckDB's vss extension, cosine metric) once the table holds at
least `hnsw_min_rows` rows; below that an exact scan is faster than the index.

`StudySearch` answers the three questions users ask:
- text -> studies:   which studies' *images* match a free-text finding ("large right effusion")
- image -> reports:  which *reports* match an image file (DICOM, PNG, JPG)
- report -> similar: which reports are closest to a study's report (or to a given text)

and `reports_for_text` a fourth, in the report encoder's own space rather than CLIP's:
- text -> reports:   which reports state a finding, the query through the encoder's query adapter
  (`TextEncoder.encode_queries`) against report_embeddings.parquet (exact cosine scan)

Queries are embedded by the registered champion pyfunc (`models:/<name>@champion`) or by the
local model in artifacts/ (`LocalEncoder`); a query embedded by one model version must only be
compared with a table built by the same version, so `auto` picks the model that built the table.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

import numpy as np
import polars as pl

from cxr_assets.fileio import atomic_path

TABLE = "study_embeddings"
META_TABLE = "embedding_meta"
VECTOR_COLUMNS = ("image_embedding", "report_embedding")
DUCKDB_VERSION_DIR = "v1.4.4"


def vector_db_path(paths) -> Path:
    """Where the study_embeddings DuckDB table lives (next to its Parquet twin)."""
    return paths.artifacts_dir / "study_embeddings.duckdb"


def vss_extension_path() -> Path | None:
    """The vss extension file shipped by the `duckdb-ext-vss` wheel, if installed.

    `INSTALL vss` downloads at run time and fails offline; the wheel's file loads with
    `LOAD '<path>'` instead.
    """
    import platform

    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        return None
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "amd64")
    system = "osx" if platform.system() == "Darwin" else "linux"
    for base in spec.submodule_search_locations:
        candidate = Path(base) / "extensions" / DUCKDB_VERSION_DIR / f"{system}_{machine}" / "vss.duckdb_extension"
        if candidate.is_file():
            return candidate
    return None


def load_vss(con) -> bool:
    """Load the vss extension into `con`; False (exact search only) when it is unavailable."""
    import duckdb

    path = vss_extension_path()
    if path is None:
        return False
    try:
        con.execute(f"LOAD '{path}'")
    except duckdb.Error:
        return False
    # HNSW indexes in a database file are 'experimental persistence' in vss: opt in explicitly.
    con.execute("SET hnsw_enable_experimental_persistence = true")
    return True


def _as_arrow(frame: pl.DataFrame):
    """Arrow table with vector columns as FixedSizeList<float32> (DuckDB reads them as FLOAT[dim])."""
    return frame.to_arrow()


def write_vector_table(frame: pl.DataFrame, db_path: Path, model_name: str, model_version: str,
                       hnsw_min_rows: int = 10_000,
                       hnsw_columns: tuple[str, ...] = VECTOR_COLUMNS) -> dict:
    """Write `frame` (with FLOAT[dim] vector columns) to a fresh DuckDB file, atomically.

    `hnsw_columns` are indexed once the table reaches `hnsw_min_rows` rows. Returns what was
    written: rows, dim, which columns carry an HNSW index.
    """
    import duckdb

    missing = [c for c in ("study_id", *VECTOR_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"write_vector_table: frame lacks columns {missing} (has {frame.columns})")
    dtype = frame.schema["image_embedding"]
    if not isinstance(dtype, pl.Array):
        raise TypeError(f"image_embedding must be a fixed-size Array column, got {dtype}")
    dim = int(dtype.size)
    unknown = set(hnsw_columns) - set(VECTOR_COLUMNS)
    if unknown:
        raise ValueError(f"hnsw_columns {sorted(unknown)} are not vector columns {VECTOR_COLUMNS}")
    db_path = Path(db_path)
    indexed: list[str] = []
    with atomic_path(db_path) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            con.register("frame_arrow", _as_arrow(frame))
            casts = ", ".join(f"CAST({c} AS FLOAT[{dim}]) AS {c}" for c in VECTOR_COLUMNS)
            others = ", ".join(c for c in frame.columns if c not in VECTOR_COLUMNS)
            con.execute(f"CREATE TABLE {TABLE} AS SELECT {others}, {casts} FROM frame_arrow")
            con.unregister("frame_arrow")
            if frame.height >= hnsw_min_rows and load_vss(con):
                for column in hnsw_columns:
                    con.execute(f"CREATE INDEX {column}_hnsw ON {TABLE} USING HNSW ({column}) "
                                "WITH (metric = 'cosine')")
                    indexed.append(column)
            info = {"model_name": model_name, "model_version": str(model_version), "dim": dim,
                    "n_rows": frame.height, "hnsw_columns": ",".join(indexed)}
            con.execute(f"CREATE TABLE {META_TABLE} AS SELECT * FROM (VALUES (?, ?, ?, ?, ?)) "
                        "t(model_name, model_version, dim, n_rows, hnsw_columns)",
                        [info["model_name"], info["model_version"], dim, frame.height,
                         info["hnsw_columns"]])
            con.execute("CHECKPOINT")
        finally:
            con.close()
            # DuckDB's write-ahead log of the temporary (none left after a clean CHECKPOINT)
            tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
    return {**info, "hnsw_columns": indexed, "path": db_path}


class QueryEncoder(Protocol):
    """Embeds queries into the shared CLIP space (L2-normalized float32 rows)."""

    version: str

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    def embed_images(self, image_paths: list[str]) -> np.ndarray: ...


def _normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class LocalEncoder:
    """The model in artifacts/ (text_encoder + clip_model): what built the current table."""

    def __init__(self, text_encoder_dir: Path, clip_model_dir: Path):
        from cxr_assets.clip.model import load_clip_model
        from cxr_assets.text.encoder import TextEncoder

        for folder in (text_encoder_dir, clip_model_dir):
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"model folder not found: {folder} (run the pipeline first)")
        self.text_encoder = TextEncoder.from_pretrained(Path(text_encoder_dir))
        self.clip = load_clip_model(Path(clip_model_dir))
        self.clip.eval()
        registry = Path(clip_model_dir) / "registry.json"
        self.version = str(json.loads(registry.read_text())["version"]) if registry.is_file() else "local"

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if self.clip.text_tower is not None:  # clip.text_tower: lora carries its own tuned encoder
            from cxr_assets.embed.images import embed_reports

            return embed_reports(self.clip, list(texts), progress=False)
        raw = self.text_encoder.encode(list(texts), instruction=self.text_encoder.instruction or None,
                                       progress=False)
        with torch.inference_mode():
            return self.clip.encode_text(torch.from_numpy(raw)).float().numpy()

    def embed_images(self, image_paths: list[str]) -> np.ndarray:
        import torch

        from cxr_assets.registry.pyfunc_model import load_image_for_model

        batch = torch.stack([load_image_for_model(p, self.clip.config.image_size) for p in image_paths])
        with torch.inference_mode():
            return self.clip.encode_image(batch).float().numpy()


class PyfuncEncoder:
    """A registered model version loaded through MLflow (what production users load)."""

    def __init__(self, model_uri: str, version: str):
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(model_uri)
        self.version = str(version)

    def _predict(self, column: str, values: list[str], out: str) -> np.ndarray:
        import pandas as pd

        predicted = self.model.predict(pd.DataFrame({column: list(values)}))
        return _normalize(np.asarray(predicted[out].tolist(), dtype=np.float32))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._predict("report_text", texts, "text_embedding")

    def embed_images(self, image_paths: list[str]) -> np.ndarray:
        return self._predict("image_path", [str(p) for p in image_paths], "image_embedding")


@dataclass(frozen=True)
class TableInfo:
    model_name: str
    model_version: str
    dim: int
    n_rows: int
    hnsw_columns: tuple[str, ...]


class StudySearch:
    """Nearest-neighbour queries on the study_embeddings DuckDB table (read-only)."""

    def __init__(self, db_path: Path):
        import duckdb

        self.db_path = Path(db_path)
        if not self.db_path.is_file():
            raise FileNotFoundError(
                f"no embedding table at {self.db_path}: materialize study_embeddings first "
                "(`dagster asset materialize --select +study_embeddings` or `dvc repro study_embeddings`)")
        self.con = duckdb.connect(str(self.db_path), read_only=True)
        self.hnsw_loaded = load_vss(self.con)
        row = self.con.execute(f"SELECT model_name, model_version, dim, n_rows, hnsw_columns "
                               f"FROM {META_TABLE}").fetchone()
        self.info = TableInfo(row[0], row[1], int(row[2]), int(row[3]),
                              tuple(c for c in row[4].split(",") if c))
        self.columns = [r[0] for r in self.con.execute(f"DESCRIBE {TABLE}").fetchall()]

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def nearest(self, column: str, query: np.ndarray, k: int = 10,
                exclude_study: str | None = None) -> pl.DataFrame:
        """The k rows whose `column` vector is closest (cosine) to `query`, best first.

        `ORDER BY array_cosine_distance(...) LIMIT k` is the shape the HNSW optimizer rewrites into
        an index scan; without an index DuckDB computes it exactly.
        """
        if column not in VECTOR_COLUMNS:
            raise ValueError(f"column must be one of {VECTOR_COLUMNS}, got {column!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        vector = np.asarray(query, dtype=np.float32).reshape(-1)
        if vector.size != self.info.dim:
            raise ValueError(f"query has dimension {vector.size}; the table holds {self.info.dim}-d "
                             f"vectors of {self.info.model_name} v{self.info.model_version}")
        shown = [c for c in self.columns if c not in VECTOR_COLUMNS]
        limit = k + (1 if exclude_study is not None else 0)
        sql = (f"SELECT {', '.join(shown)}, "
               f"array_cosine_similarity({column}, $q::FLOAT[{self.info.dim}]) AS similarity "
               f"FROM {TABLE} ORDER BY array_cosine_distance({column}, $q::FLOAT[{self.info.dim}]) "
               f"LIMIT {int(limit)}")
        result = pl.from_arrow(self.con.execute(sql, {"q": vector.tolist()}).fetch_arrow_table())
        if exclude_study is not None:
            result = result.filter(pl.col("study_id") != exclude_study)
        return result.head(k)

    def uses_hnsw(self, column: str) -> bool:
        """Whether DuckDB plans an HNSW index scan for a top-k query on `column`."""
        zero = [0.0] * self.info.dim
        plan = self.con.execute(
            f"EXPLAIN SELECT study_id FROM {TABLE} ORDER BY "
            f"array_cosine_distance({column}, $q::FLOAT[{self.info.dim}]) LIMIT 5", {"q": zero}).fetchall()
        return any("HNSW" in str(row[1]) for row in plan)

    def vector_of(self, study_id: str, column: str) -> np.ndarray:
        row = self.con.execute(f"SELECT {column} FROM {TABLE} WHERE study_id = ?", [study_id]).fetchone()
        if row is None:
            raise LookupError(f"study {study_id!r} is not in {self.db_path}")
        return np.asarray(row[0], dtype=np.float32)

    # --- the three user questions ------------------------------------------------------------
    def text_to_studies(self, encoder: QueryEncoder, text: str, k: int = 10) -> pl.DataFrame:
        """Studies whose image best matches a free-text description."""
        return self.nearest("image_embedding", encoder.embed_texts([text])[0], k)

    def image_to_reports(self, encoder: QueryEncoder, image_path: str, k: int = 10) -> pl.DataFrame:
        """Reports that best describe an image file."""
        return self.nearest("report_embedding", encoder.embed_images([str(image_path)])[0], k)

    def similar_reports(self, study_id: str | None = None, text: str | None = None,
                        encoder: QueryEncoder | None = None, k: int = 10) -> pl.DataFrame:
        """Reports closest to a study's report (no model needed) or to a given text."""
        if study_id is not None:
            return self.nearest("report_embedding", self.vector_of(study_id, "report_embedding"), k,
                                exclude_study=study_id)
        if text is None or encoder is None:
            raise ValueError("similar_reports needs a study_id, or a text and an encoder")
        return self.nearest("report_embedding", encoder.embed_texts([text])[0], k)


def open_encoder(params, paths, model: str, table: TableInfo) -> QueryEncoder:
    """The query encoder for `model`: 'auto', 'local' or 'champion' (or any registry alias).

    'auto' uses the registered champion when it is the version that built the table, else the
    local artifacts (which built it). An explicit alias whose version differs from the table's
    is refused: its vectors live in another embedding space.
    """
    from cxr_assets.registry.tracking import CHAMPION, configure_mlflow, model_uri, version_by_alias

    local = lambda: LocalEncoder(paths.text_encoder_dir, paths.clip_model_dir)
    if model == "local":
        return local()
    alias = CHAMPION if model == "auto" else model
    client = configure_mlflow(params, paths)
    version = version_by_alias(client, params.registry.model_name, alias)
    if version is not None and str(version.version) == table.model_version:
        return PyfuncEncoder(model_uri(params.registry.model_name, alias), str(version.version))
    if model == "auto":
        return local()
    found = f"v{version.version}" if version is not None else "no version"
    raise LookupError(
        f"models:/{params.registry.model_name}@{alias} is {found}, but the embedding table was built by "
        f"{table.model_name} v{table.model_version}; re-materialize study_embeddings or use --model local")


def reports_for_text(paths, text: str, k: int = 10) -> pl.DataFrame:
    """The k reports closest to `text` in the report encoder's space, best first: study_id,
    split, similarity, report_text. The embeddings must come from artifacts/text_encoder as it
    is now."""
    from cxr_assets.text.encoder import TextEncoder

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    table = paths.report_embeddings_table
    if not table.is_file():
        raise FileNotFoundError(f"no report embeddings at {table}: materialize report_embeddings first "
                                "(`dagster asset materialize --select +report_embeddings`)")
    encoder = TextEncoder.from_pretrained(paths.text_encoder_dir)
    frame = pl.read_parquet(table)
    stale = frame.filter(pl.col("encoder_hash") != encoder.content_hash).height
    if stale:
        raise LookupError(f"{stale} rows of {table} were embedded by another text encoder than "
                          f"{paths.text_encoder_dir} ({encoder.content_hash}): re-materialize "
                          "report_embeddings")
    documents = _normalize(np.stack(frame["embedding"].to_list()))
    scores = documents @ _normalize(encoder.encode_queries([text]))[0]
    top = np.argsort(-scores, kind="stable")[:k]
    texts = pl.read_parquet(paths.report_texts_table).select("study_id", "report_text")
    splits = pl.read_parquet(paths.splits_table).select("study_id", "split")
    hits = frame[top].select("study_id").with_columns(
        pl.Series("similarity", scores[top].astype(np.float32)))
    return (hits.join(splits, on="study_id", how="left", maintain_order="left")
            .join(texts, on="study_id", how="left", maintain_order="left"))
