"""One image-set type for every command: indexable by global id, shardable, with a stable identity.

    ImageSet.folder(DIR)                    the image files under DIR, sorted by path
    ImageSet.labelled(DIR | CSV, column)    the same with class labels: ImageFolder layout, or a labels CSV
    ImageSet.files(paths)                   a list of files in the given order (uploads)
    ImageSet.generated("world", n, ...)     scenes of a registered generator, rendered on demand
    ImageSet.huggingface(name, split, ...)  a split of a Hugging Face `datasets` dataset (Hub or saved locally)

`parse_image_set(spec)` reads the command line's `--images`:
    DIR                                     folder (labelled with `label_column`)
    world:N[:SEED[:SPLIT]]                  a generator's scenes (core.world registers "world")
    hf:ORG/NAME@REVISION:SPLIT[:COLUMN]     a Hub dataset, pinned to a 40-hex commit; `?stream` streams it
    hf:PATH:SPLIT[:COLUMN]                  a dataset saved with `save_to_disk`, or a folder of parquet files

Ids are positions in the set (0..count-1), whatever the kind; `shard(s, S)` and `slice(lo, hi)` give
contiguous ranges of them, whose batches carry global ids, so work split across processes merges back by
id. `identity()` is what a manifest records and what ranks compare: it never holds a machine's absolute path.

The engine never imports the packages above it: a generator of synthetic images registers itself with
`register_generator` (importing `core.world` registers the generated world as "world").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from PIL import Image

from core import guards, settings
from core.errors import ConfigError, DatasetError, ImageError, PathNotAllowedError, check_index
from core.engine.images import IMAGE_SUFFIXES, LabelledImages, image_files, image_folder, labelled_from_csv, load_image

if TYPE_CHECKING:  # torch is imported where a batch is stacked: registering a generator needs none of it
    import torch

HF_PREFIX = "hf:"
STREAM_SUFFIX = "?stream"
SHA = re.compile(r"[0-9a-f]{40}")
EXPORT_FOLDER = "image-sets"  # under the clipscope cache: files written for commands that read paths

# ---------------------------------------------------------------- generators


class ImageGenerator(Protocol):
    """Synthetic images by index (e.g. the generated world); registered with `register_generator`."""

    def params(self, n: int, seed: int, split: str | None) -> dict:
        """Checked parameters (recorded in manifests); `split` None means the generator's default."""

    def describe(self, params: dict) -> str:
        """One line for results, e.g. '2000 generated world scenes (heldout split, seed 1, world v2)'."""

    def render(self, params: dict, ids: Sequence[int]) -> list[Image.Image]:
        """The images with these ids, RGB."""

    def labels(self, params: dict, column: str) -> tuple[list[str], list[int]]:
        """(class names, label per image) for an attribute column."""


_GENERATORS: dict[str, ImageGenerator] = {}


def register_generator(name: str, generator: ImageGenerator) -> None:
    """Make `NAME:N[:SEED[:SPLIT]]` image sets and records of kind NAME readable."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name == "hf":
        raise ConfigError(f"a generator name is lower-case letters, digits and _, not 'hf'; got {name!r}")
    _GENERATORS[name] = generator


def _generator(name: str) -> ImageGenerator:
    if name not in _GENERATORS:
        known = ", ".join(sorted(_GENERATORS)) or "none yet"
        raise ConfigError(f"no image generator {name!r} is registered (registered: {known}); the package that "
                          f"provides it registers it when imported (import core.world for 'world')")
    return _GENERATORS[name]


# ---------------------------------------------------------------- the type


@dataclass(frozen=True)
class ImageSet:
    """Images that statistics are computed over; ids are positions in the set.

    kind "folder": files under params["root"] (relative paths in params["files"]); with labels when
        params has "labels" and "classnames".
    kind "files": absolute paths in params["paths"] (uploads).
    kind "hf": a `datasets` split (params: name, local, split, column, revision, streaming, fingerprint).
    any other kind: a registered generator of that name, with its params.
    """

    kind: str
    description: str
    count: int
    params: dict = field(default_factory=dict)

    # -------------------------------------------------- constructors

    @classmethod
    def folder(cls, root: str | Path) -> "ImageSet":
        root = Path(root).resolve()
        files = [p.relative_to(root).as_posix() for p in image_files(root)]
        return cls("folder", f"{len(files)} images under {root}", len(files), {"root": str(root), "files": files})

    @classmethod
    def labelled(cls, source: str | Path, label_column: str | None = None) -> "ImageSet":
        """Image files with class labels: DIR in the ImageFolder layout (labels are the sub-folder names), or
        DIR/labels.csv or a CSV file whose `label_column` holds them (other kinds: `with_labels`)."""
        path = Path(source)
        if path.is_file() or label_column:
            csv_path = path if path.is_file() else path / "labels.csv"
            if not label_column:
                raise ConfigError(f"{csv_path} is a labels table: name its label column (--label-column)")
            return cls.from_labelled(labelled_from_csv(csv_path, label_column))
        return cls.from_labelled(image_folder(path))

    @classmethod
    def from_labelled(cls, labelled: LabelledImages) -> "ImageSet":
        root = Path(_common_root(labelled.paths))
        files = [Path(os.path.abspath(p)).relative_to(root).as_posix() for p in labelled.paths]  # links not followed
        return cls("folder", labelled.description, len(files),
                   {"root": str(root), "files": files, "labels": list(labelled.labels),
                    "classnames": list(labelled.classnames)})

    @classmethod
    def files(cls, paths: Sequence[str | Path], description: str | None = None) -> "ImageSet":
        paths = [str(Path(p).resolve()) for p in paths]
        if not paths:
            raise DatasetError("no image files given")
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} image files are missing, e.g. {missing[0]}")
        return cls("files", description or f"{len(paths)} uploaded images", len(paths), {"paths": paths})

    @classmethod
    def generated(cls, name: str, n: int, seed: int = 0, split: str | None = None) -> "ImageSet":
        generator = _generator(name)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"the number of {name} images must be a positive integer, got {n!r}")
        params = generator.params(n, seed, split)
        return cls(name, generator.describe(params), n, params)

    @classmethod
    def world(cls, n: int, seed: int = 0, split: str = "train") -> "ImageSet":
        """`n` generated world scenes (needs core.world imported, which registers it)."""
        return cls.generated("world", n, seed, split)

    @classmethod
    def huggingface(cls, name: str, split: str, column: str | None = None, *, revision: str | None = None,
                    streaming: bool = False, label_column: str | None = None) -> "ImageSet":
        """A split of a Hugging Face dataset: a Hub repo pinned to `revision`, or a local folder saved with
        `save_to_disk` (or holding parquet files). Offline, a Hub dataset must already be in the HF cache."""
        source = _hf_source(name, revision)
        dataset = _hf_open(source, split, streaming)
        column = _image_column(dataset, column, _hf_label(source, split))
        count = _hf_count(dataset, source, split)
        # streamed or not, a local dataset is the same images: fingerprint its map-style form
        fingerprint = (f"{name}@{revision}" if not source.local else
                       getattr(_hf_open(source, split, False), "_fingerprint", None) or _path_fingerprint([source.path]))
        params = {"name": name if not source.local else Path(name).name, "local": source.local, "split": split,
                  "column": column, "revision": revision, "streaming": streaming, "fingerprint": fingerprint}
        if source.local:
            params["path"] = str(source.path)
        where = f"{name}@{revision[:12]}" if revision else str(source.path)
        image_set = cls("hf", f"{count} images of {where} [{split}] column {column!r}"
                        + (" (streamed)" if streaming else ""), count, params)
        return image_set.with_labels(label_column) if label_column else image_set

    @classmethod
    def from_record(cls, record: dict) -> "ImageSet":
        try:
            return cls(record["kind"], record["description"], int(record["count"]), dict(record["params"]))
        except (KeyError, TypeError, ValueError) as err:
            from core.errors import BasesError

            raise BasesError(f"the bases' image set record is malformed ({err}): rebuild the bases") from err

    # -------------------------------------------------- what it is

    def record(self) -> dict[str, Any]:
        """Everything needed to read the images again (stored with results)."""
        return {"kind": self.kind, "description": self.description, "count": self.count, "params": self.params}

    def identity(self) -> dict[str, Any]:
        """The `image_set` entry of an artifact manifest: equal on every machine that reads the same images."""
        return {"description": self.description, "count": self.count, "kind": self.kind,
                "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        """sha256 of what defines the images: relative names and sizes of files, a generator's params, a
        dataset's revision or fingerprint. Never an absolute path, so ranks on other machines agree."""
        if self.kind == "folder":
            root = Path(self.params["root"])
            key: Any = [[name, _size(root / name)] for name in self.params["files"]]
        elif self.kind == "files":
            key = [[Path(p).name, _size(Path(p))] for p in self.params["paths"]]
        elif self.kind == "hf":
            key = {k: self.params[k] for k in ("name", "split", "column", "revision", "fingerprint")}
        else:
            key = self.params
        key = {"kind": self.kind, "count": self.count, "key": key,
               "labels": self.params.get("label_column") or bool(self.params.get("labels"))}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return self.count

    @property
    def classnames(self) -> list[str] | None:
        return self.params.get("classnames")

    @property
    def labels(self) -> list[int] | None:
        return self.params.get("labels")

    def with_labels(self, column: str) -> "ImageSet":
        """This set with class labels read from `column` (a generator's attribute, a dataset's column)."""
        if self.kind == "hf":
            classnames, labels = _hf_labels(self, column)
        elif self.kind in ("folder", "files"):
            raise ConfigError("a folder's labels come from its layout or a labels CSV: use ImageSet.labelled")
        else:
            classnames, labels = _generator(self.kind).labels(self.params, column)
        return ImageSet(self.kind, f"{self.description}, labels {column!r} ({len(classnames)} classes)", self.count,
                        {**self.params, "label_column": column, "labels": list(labels), "classnames": classnames})

    # -------------------------------------------------- reading

    def image(self, index: int) -> Image.Image:
        """The image with id `index` (a generated one is re-rendered; a file must still exist)."""
        check_index("image id", index, self.count)
        return load_image(self._source(index), name=f"image {index} of {self.description}")

    def slice(self, start: int, stop: int) -> "ImageShard":
        """Ids start..stop-1."""
        if not 0 <= start <= stop <= self.count:
            raise ConfigError(f"a slice of {self.count} images must satisfy 0 <= start <= stop <= {self.count}, "
                              f"got {start}..{stop}")
        return ImageShard(self, start, stop)

    def shard(self, index: int, num_shards: int) -> "ImageShard":
        """Shard `index` of `num_shards` contiguous blocks (the first count % num_shards get one more id),
        as `datasets.Dataset.shard(contiguous=True)` cuts them."""
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ConfigError(f"the number of shards must be a positive integer, got {num_shards!r}")
        check_index("shard", index, num_shards)
        size, extra = divmod(self.count, num_shards)
        start = index * size + min(index, extra)
        return self.slice(start, start + size + (index < extra))

    def batches(self, preprocess: Callable, batch_size: int = 32, skipped: list[str] | None = None,
                threads: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(ids [batch], pixels [batch, 3, H, W]) over the whole set through the model's preprocessing."""
        return self.slice(0, self.count).batches(preprocess, batch_size, skipped, threads)

    def n_batches(self, batch_size: int) -> int:
        return -(-self.count // batch_size)

    def local_paths(self) -> list[Path]:
        """Image files for commands that read paths: a folder's own files; other kinds are written once
        into the clipscope cache (generated images as PNG, a dataset's original encoded bytes)."""
        if self.kind == "folder":
            return [Path(self.params["root"]) / name for name in self.params["files"]]
        if self.kind == "files":
            return [Path(p) for p in self.params["paths"]]
        from core.settings import cache_dir

        folder = cache_dir() / EXPORT_FOLDER / self.fingerprint()[:32]
        done = folder / "complete.json"
        if done.is_file():
            return [folder / name for name in json.loads(done.read_text())]
        folder.mkdir(parents=True, exist_ok=True)
        names = [self._export(index, source, folder) for index, source in enumerate(self._sources(0, self.count))]
        done.write_text(json.dumps(names))
        return [folder / name for name in names]

    def labelled_images(self) -> LabelledImages:
        """(paths, labels, classnames) for the commands that evaluate a classifier on labelled files."""
        if self.labels is None:
            raise DatasetError(f"{self.description} has no labels: give a labelled folder or a label column")
        return LabelledImages(self.local_paths(), list(self.labels), list(self.classnames), self.description)

    # -------------------------------------------------- internals

    def _source(self, index: int):
        """What load_image reads for id `index`: a path, encoded bytes or a rendered image."""
        if self.kind == "folder":
            return Path(self.params["root"]) / self.params["files"][index]
        if self.kind == "files":
            return Path(self.params["paths"][index])
        if self.kind == "hf":
            return _hf_item(_hf_dataset(self), index, self.params["column"])
        return _generator(self.kind).render(self.params, [index])[0]

    def _sources(self, start: int, stop: int) -> Iterator[Any]:
        if self.kind == "hf":
            yield from _hf_items(_hf_dataset(self), start, stop, self.params["column"])
        elif self.kind in ("folder", "files"):
            for index in range(start, stop):
                yield self._source(index)
        else:
            generator = _generator(self.kind)
            for chunk in range(start, stop, 64):
                yield from generator.render(self.params, list(range(chunk, min(chunk + 64, stop))))

    @staticmethod
    def _export(index: int, source, folder: Path) -> str:
        if isinstance(source, bytes):
            suffix = _suffix_of(source)
            name = f"{index:07d}{suffix}"
            (folder / name).write_bytes(source)
        elif isinstance(source, Path):
            name = f"{index:07d}{source.suffix.lower() if source.suffix.lower() in IMAGE_SUFFIXES else '.png'}"
            (folder / name).write_bytes(source.read_bytes())
        else:
            name = f"{index:07d}.png"
            load_image(source).save(folder / name)  # lossless: the same pixels as rendered
        return name


@dataclass(frozen=True)
class ImageShard:
    """Ids start..stop-1 of an image set; batches carry global ids."""

    image_set: ImageSet
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def ids(self) -> range:
        return range(self.start, self.stop)

    def batches(self, preprocess: Callable, batch_size: int = 32, skipped: list[str] | None = None,
                threads: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(global ids [batch], pixels [batch, 3, H, W]); batch boundaries are fixed by `start` and
        `batch_size` alone. Unreadable images are named in `skipped` (else raise). threads > 0 decodes
        and preprocesses each batch's images in that many threads (for a GPU that decoding would starve)."""
        import torch

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
        label = self.image_set.description

        def prepare(item):
            index, source = item
            try:
                return index, preprocess(load_image(source, name=_source_name(source, index, label))), None
            except ImageError as err:
                return index, None, err

        pool = ThreadPoolExecutor(threads) if threads > 0 else None
        try:
            sources = enumerate(self.image_set._sources(self.start, self.stop), start=self.start)
            while chunk := list(islice(sources, batch_size)):
                prepared = list(pool.map(prepare, chunk)) if pool else [prepare(item) for item in chunk]
                for _, _, err in prepared:
                    if err is not None:
                        if skipped is None:
                            raise err
                        skipped.append(str(err))
                kept = [(index, pixels) for index, pixels, err in prepared if err is None]
                if kept:
                    yield torch.tensor([i for i, _ in kept]), torch.stack([p for _, p in kept])
        finally:
            if pool:
                pool.shutdown(wait=True)


# ---------------------------------------------------------------- parsing specs


def parse_image_set(spec: str, *, generator_split: str | None = None, labelled: bool = False,
                    label_column: str | None = None, allow_paths: bool = True) -> ImageSet:
    """The image set of an `--images` value (see the module docstring).

    generator_split: a generator's split when the spec names none (commands differ: bases use held-out
    scenes, neuron statistics the training split). labelled: class labels are needed (a folder without
    `label_column` then reads as the ImageFolder layout). allow_paths False (public mode) refuses
    anything that names a server path: folders and local datasets.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--images is empty: give a folder, world:N[:SEED] or hf:ORG/NAME@REVISION:SPLIT")
    spec = spec.strip()
    wants_labels = labelled or label_column is not None
    if spec.startswith(HF_PREFIX) or _generator_spec(spec):
        if labelled and not label_column:
            raise ConfigError(f"{spec} needs a label column (--label-column) to be used as a labelled set")
    public = settings.public()
    if spec.startswith(HF_PREFIX):
        if public:  # a Hub id is not a server path, but its download has no bound known before it is made
            raise PathNotAllowedError("--images: this public server does not load hf: datasets; upload images or use "
                                      "a generated set (world:N)")
        name, revision, split, column, streaming = _parse_hf(spec)
        if not allow_paths and _hf_source(name, revision).local:
            raise ConfigError("local datasets are not available here: name a Hub dataset")
        return ImageSet.huggingface(name, split, column, revision=revision, streaming=streaming,
                                    label_column=label_column)
    generated = _generator_spec(spec, probe=not public)
    if generated:
        name, parts = generated
        if not 1 <= len(parts) <= 3:
            raise ConfigError(f"--images {name}:N[:SEED[:SPLIT]], got {spec!r}")
        try:
            numbers = [int(part) for part in parts[:2]]
        except ValueError as err:
            raise ConfigError(f"--images {name}:N[:SEED[:SPLIT]] needs integers N and SEED, got {spec!r}") from err
        split = parts[2] if len(parts) == 3 else generator_split
        try:
            image_set = ImageSet.generated(name, numbers[0], numbers[1] if len(numbers) == 2 else 0, split)
        except ConfigError as err:
            raise ConfigError(f"--images {name}:N[:SEED] (or {name}:N:SEED:SPLIT): {err}") from err
        return image_set.with_labels(label_column) if label_column else image_set
    if not allow_paths:
        raise ConfigError("image folders are not available here: upload images or use a generated set")
    guards.check_user_path(spec, "--images folder", hint="upload images or use a generated set (world:N)")
    return ImageSet.labelled(spec, label_column) if wants_labels else ImageSet.folder(spec)


def _generator_spec(spec: str, *, probe: bool = True) -> tuple[str, list[str]] | None:
    head, _, rest = spec.partition(":")
    if rest and re.fullmatch(r"[a-z][a-z0-9_]*", head) and (head in _GENERATORS or head == "world"):
        if probe and Path(spec).exists():  # never probed on a public server
            return None  # a folder that happens to be called world:3
        return head, rest.split(":")
    return None


def _parse_hf(spec: str) -> tuple[str, str | None, str, str | None, bool]:
    body = spec[len(HF_PREFIX):]
    streaming = body.endswith(STREAM_SUFFIX)
    if streaming:
        body = body[: -len(STREAM_SUFFIX)]
    parts = body.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"--images {spec!r}: expected hf:ORG/NAME@REVISION:SPLIT[:COLUMN], or hf:PATH:SPLIT[:COLUMN] "
                          "for a dataset saved locally (append ?stream to stream it)")
    name, split, column = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    revision = None
    if "@" in name and not Path(name).exists():
        name, revision = name.rsplit("@", 1)
    return name, revision, split, column, streaming


# ---------------------------------------------------------------- Hugging Face datasets


@dataclass(frozen=True)
class _HfSource:
    name: str
    revision: str | None
    local: bool
    path: Path | None


def _hf_source(name: str, revision: str | None) -> _HfSource:
    path = Path(name).expanduser()
    if path.exists():
        if revision:
            raise ConfigError(f"{name} is a local dataset: a revision (@{revision}) applies to Hub datasets only")
        return _HfSource(name, None, True, path.resolve())
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*", name):
        raise DatasetError(f"hf:{name} is neither a local dataset folder nor a Hub dataset name ORG/NAME")
    if revision is None or not SHA.fullmatch(revision):
        raise ConfigError(f"pin the Hub dataset to a commit so every rank and rerun reads the same images: "
                          f"hf:{name}@<40-hex commit sha>:SPLIT (got revision {revision!r}); the dataset page's "
                          "'Files and versions' history lists its commits")
    return _HfSource(name, revision, False, None)


def _hf_label(source: _HfSource, split: str) -> str:
    return f"hf:{source.name}" + (f"@{source.revision[:12]}" if source.revision else "") + f" [{split}]"


def _datasets():
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - it is in requirements.txt
        raise DatasetError("Hugging Face datasets are read with the `datasets` package: pip install datasets") from err
    return datasets


@lru_cache(maxsize=8)
def _hf_open_cached(name: str, revision: str | None, local: bool, path: str | None, split: str, streaming: bool):
    datasets = _datasets()
    label = f"hf:{name}" + (f"@{revision[:12]}" if revision else "")
    if local:
        folder = Path(path)
        if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
            dataset = datasets.load_from_disk(str(folder))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DatasetError(f"{label} has splits {', '.join(dataset)}; no split {split!r}")
                dataset = dataset[split]
        else:
            from core.settings import cache_dir

            files = sorted(folder.rglob("*.parquet")) if folder.is_dir() else [folder]
            if not files or any(f.suffix != ".parquet" for f in files):
                raise DatasetError(f"{label}: a local dataset is a folder written by save_to_disk, or parquet files")
            try:
                dataset = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split,
                                                cache_dir=str(cache_dir() / "hf-datasets"))
            except Exception as err:  # noqa: BLE001 - datasets raises many kinds; the message says which
                raise DatasetError(f"{label}: could not read its parquet files: {_first_line(err)}") from err
        return dataset.to_iterable_dataset(num_shards=1) if streaming else dataset
    try:
        return datasets.load_dataset(name, split=split, revision=revision, streaming=streaming)
    except Exception as err:  # noqa: BLE001
        if _offline():
            raise DatasetError(
                f"{label} [{split}] is not in the local Hugging Face cache and the Hub cannot be reached (offline "
                f"mode): download it once online (datasets.load_dataset({name!r}, revision=...)), or save it with "
                f"save_to_disk and pass hf:PATH:{split}. ({_first_line(err)})") from err
        raise DatasetError(f"{label} [{split}] could not be loaded: {_first_line(err)}") from err


def _hf_open(source: _HfSource, split: str, streaming: bool):
    return _hf_open_cached(source.name, source.revision, source.local, str(source.path) if source.path else None,
                           split, streaming)


def _hf_dataset(image_set: ImageSet):
    p = image_set.params
    name = p.get("path") or p["name"]
    return _hf_open(_hf_source(name, p["revision"]), p["split"], p["streaming"])


def _offline() -> bool:
    from core import settings

    try:
        import datasets.config as config

        if getattr(config, "HF_HUB_OFFLINE", False) or getattr(config, "HF_DATASETS_OFFLINE", False):
            return True
    except ImportError:  # pragma: no cover
        pass
    return settings.hub_offline()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _image_column(dataset, column: str | None, label: str) -> str:
    datasets = _datasets()
    features = dataset.features or {}
    images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    described = ", ".join(f"{name} ({type(f).__name__})" for name, f in features.items()) or "none known"
    if column is None:
        if not images:
            raise DatasetError(f"{label} has no image column (columns: {described}); name one as "
                               "hf:NAME:SPLIT:COLUMN if it holds images")
        return images[0]
    if column not in features:
        raise DatasetError(f"{label} has no column {column!r} (columns: {described})")
    if column not in images:
        raise DatasetError(f"column {column!r} of {label} is not an image column (columns: {described})")
    return column


def _hf_count(dataset, source: _HfSource, split: str) -> int:
    try:
        return len(dataset)
    except TypeError:
        pass
    splits = getattr(dataset.info, "splits", None) or {}
    count = getattr(splits.get(split), "num_examples", None) if hasattr(splits, "get") else None
    if source.local:  # a local dataset streamed: its map-style length is known
        count = len(_hf_open(source, split, False))
    if not count:
        raise DatasetError(f"{_hf_label(source, split)} does not state its size, which fixed shards need: load it "
                           "without ?stream, or save it locally with save_to_disk")
    return int(count)


def _as_source(value):
    """A `datasets` Image value, undecoded ({"bytes", "path"}), as bytes or a path for load_image."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return Path(value["path"])
    return value


def _hf_item(dataset, index: int, column: str):
    return next(iter(_hf_items(dataset, index, index + 1, column)))


def _hf_items(dataset, start: int, stop: int, column: str) -> Iterator[Any]:
    """Ids start..stop-1, undecoded: our load_image decodes them (size checks, EXIF, colour modes)."""
    dataset = dataset.select_columns([column])
    if _is_iterable_dataset(dataset):
        dataset = dataset.cast_column(column, _datasets().Image(decode=False))
        seen = 0
        for row in dataset.skip(start).take(stop - start):
            seen += 1
            yield _as_source(row[column])
        if seen != stop - start:
            raise DatasetError(f"the streamed dataset ended after {start + seen} rows; {stop} were expected")
        return
    table = dataset.with_format("arrow")
    for chunk in range(start, stop, 256):
        for value in table[chunk:min(chunk + 256, stop)].column(column).to_pylist():
            yield _as_source(value)


def _is_iterable_dataset(dataset) -> bool:
    return type(dataset).__name__ == "IterableDataset"


def _hf_labels(image_set: ImageSet, column: str) -> tuple[list[str], list[int]]:
    datasets = _datasets()
    dataset = _hf_dataset(image_set)
    features = dataset.features or {}
    if column not in features:
        raise DatasetError(f"{image_set.description} has no label column {column!r} (columns: {', '.join(features)})")
    feature = features[column]
    values = [row[column] for row in dataset.select_columns([column])]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), [int(v) for v in values]
    names = sorted({str(v) for v in values})
    index = {name: i for i, name in enumerate(names)}
    return names, [index[str(v)] for v in values]


# ---------------------------------------------------------------- small helpers


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _path_fingerprint(paths: Sequence[Path]) -> str:
    entries = sorted([p.name, _size(p)] for root in paths for p in ([root] if root.is_file() else root.rglob("*")))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _common_root(paths: Sequence) -> str:
    resolved = [os.path.abspath(p) for p in paths]
    if not resolved:
        raise DatasetError("no images in the labelled set")
    root = os.path.commonpath(resolved)
    return root if Path(root).is_dir() else str(Path(root).parent)


def _suffix_of(data: bytes) -> str:
    for magic, suffix in ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
                          (b"RIFF", ".webp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif")):
        if data.startswith(magic):
            return suffix
    return ".img"


def _source_name(source, index: int, label: str) -> str:
    return str(source) if isinstance(source, Path) else f"image {index} of {label}"
