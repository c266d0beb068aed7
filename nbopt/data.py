"""Calibration and evaluation data: every accepted form loads through Hugging Face ``datasets``.

``load(obj)`` returns a ``Data``: one Arrow-backed dataset (memory-mapped from disk, or streamed for an
``IterableDataset``) that yields batches of named numpy inputs and optional labels. Backends convert
those batches into their own format. Nothing here reaches the network.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import NboptError, one_line

# Offline always: set before ``datasets`` is first imported (it reads these at import time).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LABEL_NAMES = ("label", "labels", "target", "y")
SINGLE_INPUT = "input"
_TABULAR_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}


@dataclass
class Data:
    """Examples with named inputs and optional labels, read in batches."""

    ds: Any  # datasets.Dataset (numpy format) or datasets.IterableDataset
    input_names: list[str]
    label_name: str | None
    fingerprint: str

    @property
    def single_input(self) -> bool:
        """True when each example is one array (fed positionally), not a dict of named arrays."""
        return self.input_names == [SINGLE_INPUT]

    @property
    def has_labels(self) -> bool:
        return self.label_name is not None

    @property
    def streaming(self) -> bool:
        return not hasattr(self.ds, "__len__")

    @property
    def num_examples(self) -> int | None:
        return None if self.streaming else len(self.ds)

    def __len__(self) -> int:
        if self.streaming:
            return sum(len(next(iter(b.values()))) for b, _ in self.batches(256))
        return len(self.ds)

    def batches(self, batch_size: int = 64) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Yield (inputs, labels) batches; labels is None without a label column."""
        for batch in self.ds.iter(batch_size=batch_size):
            inputs = {name: _stack(name, batch[name]) for name in self.input_names}
            labels = np.asarray(batch[self.label_name]) if self.label_name else None
            yield inputs, labels

    def example(self, n: int = 1) -> dict[str, np.ndarray]:
        """The first ``n`` examples' inputs, batched."""
        return next(self.batches(n))[0]

    def labels(self) -> np.ndarray | None:
        """All labels (one column, small) or None."""
        if not self.label_name:
            return None
        if self.streaming:
            return np.concatenate([lab for _, lab in self.batches(1024)])
        return np.asarray(self.ds[self.label_name])

    @property
    def string_labels(self) -> bool:
        """True when the labels are class names rather than class indices."""
        if not self.label_name:
            return False
        first = next(self.batches(1))[1]
        return first is not None and first.dtype.kind in "USO"

    def with_label_ids(self, names: list[str], role: str) -> "Data":
        """The same examples with class-name labels turned into indices into ``names``."""
        index = {str(n): i for i, n in enumerate(names)}
        unknown = sorted({str(v) for v in self.labels()} - set(index))
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
            raise NboptError(f"The {role} labels {shown} are not among the {len(names)} class names given "
                             f"({', '.join(map(repr, list(names)[:5]))}{', ...' if len(names) > 5 else ''}).")
        label = self.label_name
        with _quiet_datasets():
            ds = self.ds.with_format(None).map(lambda b: {label: [index[str(v)] for v in b[label]]}, batched=True)
        return Data(ds.with_format("numpy"), self.input_names, label, _hash_text(self.fingerprint, "ids", *names))

    def sample(self, n: int, seed: int = 0) -> "Data":
        """``n`` examples, seeded, stratified by label when labels exist (calibration sampling)."""
        if self.streaming:
            ds = self.ds.shuffle(seed=seed, buffer_size=max(1000, 4 * n)).take(n)
            return Data(ds, self.input_names, self.label_name, _hash_text(self.fingerprint, "sample", n, seed))
        total = len(self.ds)
        if n >= total:
            return self
        idx = _sample_indices(total, n, seed, self.labels())
        return Data(self.ds.select(idx), self.input_names, self.label_name,
                    _hash_text(self.fingerprint, "sample", n, seed))


def load(obj: Any, role: str = "eval", tokenizer: Any = None) -> Data:
    """Load any accepted form (see DESIGN.md) into a ``Data``. ``role`` picks a split of a DatasetDict.
    Text (a list of strings, or (texts, labels)) is tokenized with ``tokenizer`` (a ``TextEncoder`` from
    ``text_encoder``, or a Hugging Face tokenizer: then padded to this data's longest text)."""
    if isinstance(obj, Data):
        return obj
    if obj is None:
        raise NboptError(f"No {role} data was given: pass {role}=... (arrays, a Dataset, a DataFrame, "
                         "a DataLoader, a file or a folder).")
    if _texts_of(obj) is not None:
        obj = _encoded(obj, tokenizer, role)
    with _quiet_datasets():
        data = _from_hf(_to_hf(obj, role))
    if not data.streaming and len(data.ds) == 0:
        raise NboptError(f"The {role} data is empty: give at least one example.")
    _check_finite(data, role)
    return data


def _check_finite(data: Data, role: str, stream_limit: int = 4096) -> None:
    """NaN or inf in the inputs would turn every number downstream into noise (a dynamic-quantization
    scale taken from an inf, say): say which input and how many values, once. A stream is checked on its
    first ``stream_limit`` examples."""
    bad: dict[str, int] = {}
    seen = 0
    for inputs, _ in data.batches(1024):
        for name, arr in inputs.items():
            if np.issubdtype(arr.dtype, np.floating):
                n = int(arr.size - np.isfinite(arr).sum())
                if n:
                    bad[name] = bad.get(name, 0) + n
        seen += len(next(iter(inputs.values())))
        if data.streaming and seen >= stream_limit:
            break
    if bad:
        what = ", ".join(f"'{name}' has {n} NaN or inf value{'s' if n > 1 else ''}" for name, n in bad.items())
        shown = "input" if data.single_input else "inputs"
        raise NboptError(f"The {role} data's {shown}: {what}; clean or drop those examples first "
                         "(np.isfinite finds them).")


@contextmanager
def _quiet_datasets():
    """datasets' own progress bars would clutter the notebook for the seconds a load takes."""
    import datasets

    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


# -- turning each form into a datasets.Dataset --------------------------------------------------------
def _to_hf(obj: Any, role: str):
    import datasets

    if isinstance(obj, (datasets.Dataset, datasets.IterableDataset)):
        return obj
    if isinstance(obj, datasets.DatasetDict):
        return _pick_split(obj, role)
    if isinstance(obj, (str, Path)):
        return _from_path(Path(obj), role)
    mod = type(obj).__module__
    if mod.startswith("pandas"):
        if len(obj) == 0:
            raise NboptError(f"The {role} DataFrame is empty: give at least one row.")
        return datasets.Dataset.from_pandas(obj, preserve_index=False)
    if mod.startswith("tensorflow"):
        return _from_examples(_tf_examples(obj))
    if mod.startswith("torch.utils.data"):
        return _from_examples(_torch_examples(obj))
    if isinstance(obj, tuple):
        if len(obj) != 2:
            raise NboptError(f"A {role} tuple must be (inputs, labels); got {len(obj)} items.")
        return _from_examples(_array_examples(*obj))
    if isinstance(obj, dict) or _is_array(obj):
        return _from_examples(_array_examples(obj, None))
    raise NboptError(f"nbopt cannot read {role} data of type {type(obj).__name__}: give arrays, (inputs, "
                     "labels), a datasets.Dataset, a DataFrame, a torch Dataset/DataLoader, a tf.data.Dataset, "
                     "or a path to a .npz / CSV / Parquet / JSON file, a saved datasets folder or an image folder.")


def _pick_split(dd, role: str):
    order = ("train", "calibration", "validation", "test") if role == "calib" else (
        "validation", "test", "eval", "train")
    for name in order:
        if name in dd:
            return dd[name]
    return dd[next(iter(dd))]


def _from_path(path: Path, role: str = "eval"):
    import datasets

    if not path.exists():
        raise NboptError(f"Data path '{path}' does not exist: check the path.")
    if path.is_dir():
        if _is_saved_dataset(path):
            return _from_saved(path, role)
        ds = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
        return _images_to_arrays(ds)
    if path.suffix.lower() == ".npz":
        return _from_npz(path)
    builder = _TABULAR_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise NboptError(f"Cannot read data file '{path.name}': use a .npz, .csv, .parquet, .json or .jsonl file, "
                         "a folder saved with datasets' save_to_disk, or an image folder.")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)


NPZ_LABELS = ("labels", "label")


def _from_npz(path: Path):
    """``.npz``: one array per model input (named after it) plus an optional ``labels`` / ``label`` array;
    a single non-label array is a single-input model's input."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # noqa: BLE001 - a corrupt file, or object arrays (pickles are refused)
        raise NboptError(f"Cannot read '{path.name}' as a NumPy .npz file of plain arrays "
                         f"({one_line(exc, 200)}).") from None
    found = [k for k in NPZ_LABELS if k in arrays]
    if len(found) > 1:
        raise NboptError(f"'{path.name}' has both 'labels' and 'label' arrays: keep one of them.")
    sizes = {k: (len(v) if np.ndim(v) else 0) for k, v in arrays.items()}
    labels = arrays.pop(found[0]) if found else None
    if not arrays:
        raise NboptError(f"'{path.name}' holds no input arrays, only labels: save one array per model input.")
    if len(set(sizes.values())) > 1 or 0 in sizes.values():
        counts = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise NboptError(f"The arrays in '{path.name}' must all have the same number of examples (one row each, "
                         f"at least one), but they have {counts}.")
    inputs = next(iter(arrays.values())) if len(arrays) == 1 else arrays
    return _from_examples(_array_examples(inputs, labels))


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def _from_saved(path: Path, role: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow files, no network
    except Exception as exc:  # noqa: BLE001
        raise NboptError(f"Cannot read the saved dataset in '{path}' ({one_line(exc, 200)}).") from None
    return _pick_split(ds, role) if isinstance(ds, datasets.DatasetDict) else ds


def _images_to_arrays(ds):
    """Image columns become float32 CHW arrays in [0, 1] (PyTorch's layout)."""
    import datasets

    image_cols = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
    if not image_cols:
        return ds

    def convert(batch):
        for col in image_cols:
            arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in batch[col]]
            batch[col] = [a.transpose(2, 0, 1) for a in arrays]
        return batch

    ds = ds.map(convert, batched=True, batch_size=64)
    renames = {image_cols[0]: SINGLE_INPUT} if len(image_cols) == 1 and SINGLE_INPUT not in ds.features else {}
    return ds.rename_columns(renames) if renames else ds


def _from_examples(examples: Iterator[dict[str, np.ndarray]]):
    """Write examples to an Arrow file in a scratch folder (memory-mapped, not held in memory)."""
    import datasets

    examples = iter(examples)
    try:
        first = next(examples)
    except StopIteration:
        raise NboptError("The data is empty: give at least one example.") from None
    features = datasets.Features({k: _feature(k, v) for k, v in first.items()})
    digest = hashlib.blake2b(digest_size=16)

    def gen():
        for ex in _chain(first, examples):
            for key in sorted(ex):
                _check_shape(key, ex[key], first[key])
                digest.update(np.ascontiguousarray(ex[key]).tobytes())
            yield ex

    try:
        ds = datasets.Dataset.from_generator(gen, features=features, cache_dir=str(_scratch_dir()),
                                             fingerprint=uuid.uuid4().hex)
    except datasets.exceptions.DatasetGenerationError as exc:
        if isinstance(exc.__cause__, NboptError):  # our own check, raised inside the writer
            raise exc.__cause__ from None
        raise
    ds._nbopt_fingerprint = digest.hexdigest()
    return ds


def _chain(first, rest):
    yield first
    yield from rest


def _feature(name: str, value: np.ndarray):
    import datasets

    value = np.asarray(value)
    dtype = str(value.dtype)
    if value.ndim == 0 and value.dtype.kind in "USO":  # a class name as label
        return datasets.Value("string")
    if value.ndim == 0:
        return datasets.Value(dtype)
    if value.ndim == 1:
        return datasets.List(datasets.Value(dtype), length=value.shape[0])
    if value.ndim > 5:
        raise NboptError(f"Input '{name}' has {value.ndim} dimensions per example; nbopt handles up to 5.")
    cls = getattr(datasets, f"Array{value.ndim}D")
    return cls(shape=value.shape, dtype=dtype)


def _check_shape(name: str, value: np.ndarray, first: np.ndarray) -> None:
    if np.shape(value) != np.shape(first):
        raise NboptError(f"Examples of '{name}' differ in shape ({np.shape(first)} then {np.shape(value)}): "
                         "pad or resize them to one shape.")


def _is_array(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or type(obj).__module__.startswith("torch") and hasattr(obj, "numpy")


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)  # models run in float32; float64 data is almost always accidental
    return arr


def _array_examples(inputs: Any, labels: Any) -> Iterator[dict[str, np.ndarray]]:
    named = {str(k): _as_numpy(v) for k, v in inputs.items()} if isinstance(inputs, dict) else {
        SINGLE_INPUT: _as_numpy(inputs)}
    counts = {k: (len(v) if v.ndim else 0) for k, v in named.items()}
    if any(c == 0 for c in counts.values()):
        raise NboptError("The data has no examples (an empty or 0-dimensional array): give one row per example.")
    if len(set(counts.values())) > 1:
        raise NboptError(f"Inputs have different numbers of examples: {counts}.")
    n = next(iter(counts.values()))
    lab = None
    if labels is not None:
        lab = _as_numpy(labels)
        if len(lab) != n:
            raise NboptError(f"The data has {n} inputs but {len(lab)} labels: give one label per example.")
    for i in range(n):
        ex = {k: v[i] for k, v in named.items()}
        if lab is not None:
            ex["label"] = lab[i]
        yield ex


def _split_item(item: Any) -> dict[str, np.ndarray]:
    if isinstance(item, dict):
        return {str(k): _as_numpy(v) for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return {SINGLE_INPUT: _as_numpy(item[0])}
        if len(item) != 2:
            raise NboptError(f"Each example must be (input, label) or a dict; got {len(item)} items.")
        x, y = item
        ex = {str(k): _as_numpy(v) for k, v in x.items()} if isinstance(x, dict) else {SINGLE_INPUT: _as_numpy(x)}
        ex["label"] = _as_numpy(y)
        return ex
    return {SINGLE_INPUT: _as_numpy(item)}


def _unbatch(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(batch.values())))
    for i in range(n):
        yield {k: v[i] for k, v in batch.items()}


def _torch_examples(obj: Any) -> Iterator[dict[str, np.ndarray]]:
    from torch.utils.data import DataLoader

    batched = isinstance(obj, DataLoader) and obj.batch_size is not None
    for item in obj:
        ex = _split_item(item)
        yield from (_unbatch(ex) if batched else [ex])


def _tf_examples(obj: Any) -> Iterator[dict[str, np.ndarray]]:
    spec = obj.element_spec
    first = spec[0] if isinstance(spec, tuple) else spec
    first = next(iter(first.values())) if isinstance(first, dict) else first
    batched = len(first.shape) > 0 and first.shape[0] is None
    for item in obj.as_numpy_iterator():
        ex = _split_item(item)
        yield from (_unbatch(ex) if batched else [ex])


# -- one internal form -------------------------------------------------------------------------------
def _from_hf(ds) -> Data:
    import datasets

    columns = list(ds.features or {}) if ds.features is not None else list(next(iter(ds)).keys())
    if ds.features is not None and any(isinstance(f, datasets.Image) for f in ds.features.values()):
        ds = _images_to_arrays(ds)
        columns = list(ds.features)
    label = next((c for c in LABEL_NAMES if c in columns), None)
    inputs = [c for c in columns if c != label]
    if not inputs:
        raise NboptError("The data has no input columns, only labels.")
    if len(inputs) > 1 and _all_scalar(ds, inputs):
        ds = _stack_tabular(ds, inputs, label)
        inputs = [SINGLE_INPUT]
    elif len(inputs) == 1 and inputs[0] != SINGLE_INPUT:
        ds = ds.rename_column(inputs[0], SINGLE_INPUT)
        inputs = [SINGLE_INPUT]
    fingerprint = getattr(ds, "_nbopt_fingerprint", None) or getattr(ds, "_fingerprint", None) or uuid.uuid4().hex
    if hasattr(ds, "with_format"):
        ds = ds.with_format("numpy")
    return Data(ds, inputs, label, str(fingerprint))


def _all_scalar(ds, columns: list[str]) -> bool:
    import datasets

    feats = ds.features or {}
    return all(isinstance(feats.get(c), datasets.Value) for c in columns)


def _stack_tabular(ds, columns: list[str], label: str | None):
    """Numeric feature columns (CSV, DataFrame) become one float32 vector per row."""
    def stack(batch):
        return {SINGLE_INPUT: np.stack([np.asarray(batch[c], dtype=np.float32) for c in columns], axis=1)}

    try:
        return ds.map(stack, batched=True, remove_columns=columns)
    except (ValueError, TypeError) as exc:
        raise NboptError(f"Columns {columns} are not all numeric ({exc}); keep only numeric feature columns "
                         "and a 'label' column.") from None


def _stack(name: str, values: Any) -> np.ndarray:
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    if arr.dtype == object:
        try:
            arr = np.stack([np.asarray(v) for v in values])
        except ValueError:
            raise NboptError(f"Examples of input '{name}' differ in length: pad them to one length "
                             "(e.g. tokenizer(..., padding='max_length')).") from None
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return arr


def _sample_indices(total: int, n: int, seed: int, labels: np.ndarray | None) -> list[int]:
    rng = np.random.default_rng(seed)
    if labels is None or labels.dtype.kind == "f" or labels.ndim > 1:  # no classes to stratify by (next tokens)
        return sorted(rng.choice(total, size=n, replace=False).tolist())
    from sklearn.model_selection import train_test_split

    idx = np.arange(total)
    try:
        picked, _ = train_test_split(idx, train_size=n, random_state=seed, stratify=labels)
    except ValueError:  # a class too rare to stratify: fall back to a plain seeded draw
        picked = rng.choice(total, size=n, replace=False)
    return sorted(np.asarray(picked).tolist())


# -- text and language models ---------------------------------------------------------------------------
@dataclass
class TextEncoder:
    """A tokenizer, the one padded length every role's text gets (calibration and evaluation examples must
    share one shape) and the tokenizer outputs the model takes."""

    tokenizer: Any
    length: int
    keep: tuple[str, ...] | None = None  # None: every output of the tokenizer
    single: bool = False  # the model takes the ids as its one positional input

    def encode(self, texts: list[str]) -> dict[str, np.ndarray] | np.ndarray:
        """int64 arrays padded on the right to ``length``: real tokens keep positions 0..n-1, and the
        attention mask (where the model takes one) marks the padding."""
        enc = _tokenize(self.tokenizer, texts, self.length)
        pad = _pad_id(self.tokenizer)
        out = {}
        for name in (k for k in enc.keys() if self.keep is None or k in self.keep):
            arr = np.full((len(texts), self.length), pad if name == "input_ids" else 0, dtype=np.int64)
            for i, row in enumerate(enc[name]):
                arr[i, :len(row)] = row
            out[name] = arr
        if "input_ids" not in out:
            raise NboptError(f"The tokenizer ({type(self.tokenizer).__name__}) gave no 'input_ids': pass the "
                             "model's own Hugging Face tokenizer.")
        return out["input_ids"] if self.single else out


def text_encoder(tokenizer: Any, model: Any, sources: dict[str, Any]) -> TextEncoder | None:
    """The encoder for the text among ``sources`` (role -> data as given), None when none is text."""
    texts = {role: t for role, obj in sources.items() if (t := _texts_of(obj)) is not None}
    if not texts:
        return None
    role = next(iter(texts))
    if tokenizer is None:
        raise NboptError(f"The {role} data is text: pass tokenizer=... (the model's own, e.g. "
                         "AutoTokenizer.from_pretrained(name)) so that nbopt can turn it into token ids.")
    if not callable(tokenizer):
        raise NboptError(f"tokenizer= must be a Hugging Face tokenizer (called on a list of strings), got a "
                         f"{type(tokenizer).__name__}.")
    cap = _max_positions(model, tokenizer)
    longest = max(len(ids) for t in texts.values() for ids in _tokenize(tokenizer, t, cap)["input_ids"])
    keep, single = _model_inputs(model)
    return TextEncoder(tokenizer, max(longest, 1), keep, single)


def _texts_of(obj: Any) -> list[str] | None:
    """The texts of a list of strings or of (texts, labels); None for any other form."""
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, str) for t in obj):
        return list(obj)
    if isinstance(obj, tuple) and len(obj) == 2 and not isinstance(obj[0], str):
        return _texts_of(obj[0]) if isinstance(obj[0], (list, tuple)) else None
    return None


def _encoded(obj: Any, tokenizer: Any, role: str) -> Any:
    encoder = tokenizer if isinstance(tokenizer, TextEncoder) else text_encoder(tokenizer, None, {role: obj})
    texts = _texts_of(obj)
    inputs = encoder.encode(texts)
    return (inputs, obj[1]) if isinstance(obj, tuple) and obj and not isinstance(obj[0], str) else inputs


def _tokenize(tokenizer: Any, texts: list[str], max_length: int | None):
    try:
        return tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)
    except Exception as exc:  # noqa: BLE001 - a tokenizer's own error, in one line
        raise NboptError(f"The tokenizer failed on the text ({one_line(exc, 200)}): pass the model's own Hugging "
                         "Face tokenizer.") from None


def _pad_id(tokenizer: Any) -> int:
    """The padding token, else end-of-text (GPT-2 has no padding token; the attention mask hides it)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _max_positions(model: Any, tokenizer: Any) -> int | None:
    """The longest sequence the model (its config) and the tokenizer take; None when neither says."""
    config = getattr(model, "config", None)
    limits = [getattr(config, a, None) for a in ("n_positions", "max_position_embeddings")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [v for v in limits if isinstance(v, int) and 0 < v < 1_000_000]  # tokenizers say 1e30 for none
    return min(limits) if limits else None


def _model_inputs(model: Any) -> tuple[tuple[str, ...] | None, bool]:
    """(the tokenizer outputs the model's forward takes, whether it takes the ids as its one input)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return None, False  # a file, or no signature to read: keep what the tokenizer gives
    if any(p.kind is p.VAR_KEYWORD for p in params.values()) and "input_ids" not in params:
        return None, False
    if "input_ids" in params:
        return tuple(params), False
    return ("input_ids",), True  # forward(x): the ids, positionally


def _vocab_size(model: Any) -> int | None:
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else None


def _ids_input(data: Data) -> str | None:
    """The input that holds token ids: 'input_ids', or a single integer input."""
    if "input_ids" in data.input_names:
        return "input_ids"
    if data.single_input and data.example(1)[SINGLE_INPUT].dtype.kind in "iu":
        return SINGLE_INPUT
    return None


def check_token_ids(model: Any, data: Data, role: str, stream_limit: int = 4096) -> None:
    """Token ids outside the model's vocabulary (config.vocab_size) would index past its embedding table."""
    vocab, name = _vocab_size(model), _ids_input(data)
    if vocab is None or name is None:
        return
    low, high, seen = 0, 0, 0
    for inputs, _ in data.batches(1024):
        ids = inputs[name]
        low, high = min(low, int(ids.min(initial=0))), max(high, int(ids.max(initial=0)))
        seen += len(ids)
        if data.streaming and seen >= stream_limit:
            break
    if high >= vocab or low < 0:
        where = "" if name == SINGLE_INPUT else f" in '{name}'"
        raise NboptError(f"The {role} data has token id {high if high >= vocab else low}{where}, but the model's "
                         f"vocabulary has {vocab} tokens (ids 0 to {vocab - 1}): tokenize with the model's own "
                         "tokenizer.")


def check_lm_head(model: Any, metric: str) -> None:
    """A Hugging Face model without a language-model head (GPT2Model, a classifier) has no next-token logits."""
    get, vocab = getattr(model, "get_output_embeddings", None), _vocab_size(model)
    if vocab is None or not callable(get):
        return
    try:
        head = get()
    except Exception:  # noqa: BLE001 - a model that cannot say: the metric checks the logits' shape
        return
    if head is None:
        raise NboptError(f"metric='{metric}' needs a model with a language-model head (logits over its {vocab}-token "
                         f"vocabulary), but this {type(model).__name__} has none: load it with "
                         "AutoModelForCausalLM, or use metric='cosine'.")


def with_next_tokens(data: Data, role: str, metric: str) -> Data:
    """The data with labels = the next tokens the language-model metrics score: the input ids, with
    IGNORE_INDEX where the attention mask marks padding. Labels already shaped like the ids are kept."""
    from .metrics import IGNORE_INDEX

    name = _ids_input(data)
    if name is None:
        raise NboptError(f"metric='{metric}' needs token ids: give the {role} data as token-id arrays "
                         "({'input_ids': ..., 'attention_mask': ...}) or as text with tokenizer=....")
    if data.has_labels:
        inputs, labels = next(data.batches(1))
        if labels.shape != inputs[name].shape:
            raise NboptError(f"metric='{metric}' scores the next tokens of the input ids, but the {role} labels are "
                             f"not one token per position: drop the label column (nbopt takes the next tokens from "
                             "the ids), or give labels shaped like the ids (-100 where a token is not scored).")
        return data
    mask = "attention_mask" if "attention_mask" in data.input_names else None

    def add(batch):
        ids = np.asarray(batch[name], dtype=np.int64)
        keep = np.asarray(batch[mask]) != 0 if mask else np.ones(ids.shape, dtype=bool)
        return {"labels": np.where(keep, ids, IGNORE_INDEX)}

    with _quiet_datasets():
        ds = data.ds.map(add, batched=True)
    return Data(ds.with_format("numpy"), data.input_names, "labels", _hash_text(data.fingerprint, "next-tokens"))


def for_metric(data: Data | None, model: Any, metric: Any, role: str) -> Data | None:
    """Token ids checked against the model's vocabulary; for the language-model metrics, the next tokens
    as labels (the evaluation and calibration data: mixed-precision scores its trials on the latter)."""
    if data is None:
        return None
    check_token_ids(model, data, role)
    if not getattr(metric, "next_tokens", False) or role == "train":
        return data
    if role == "eval":
        check_lm_head(model, metric.name)
    return with_next_tokens(data, role, metric.name)


def _hash_text(*parts: Any) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def _scratch_dir() -> Path:
    """A folder for the Arrow files of in-memory data: under the study's store while a study loads its
    data, else in the system temp folder (removed at exit)."""
    from .store import scratch_dir

    return scratch_dir("data")
