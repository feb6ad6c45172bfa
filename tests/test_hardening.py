"""Every broken input is refused in one line (exit 2), nothing is half-written or lost, an
interrupted run resumes to the same result, and the same command gives the same bytes.

``CASES`` is one hostile input per row, grouped by class (issue 14). Each row runs through the
CLI and must end with its exit code and exactly one stderr line containing its message, and must
not create the paths it names. The same rows, with the interruption rows checked by their own
tests below, are the table in docs/security.md: ``test_docs_table_is_the_checked_table`` compares
them (``GCNSHRINK_WRITE_DOCS=1`` rewrites it).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from gcnshrink import cli as cli_module
from gcnshrink.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write
from gcnshrink.fuzz import tiny_checkpoint
from gcnshrink.sparse_format import SPARSE_KEY, save_tensors

TINY = "synthetic:hands?train=40&test=20"  # 14 classes
DOCS = Path(__file__).parent.parent / "docs" / "security.md"
TABLE_START, TABLE_END = "<!-- refusals:start -->", "<!-- refusals:end -->"


@dataclass(frozen=True)
class Case:
    klass: str  # the class of input
    what: str  # the input, for people
    make: Callable[[Path, dict], list]  # writes what it needs into a folder; returns argv
    message: str  # the stderr line contains this (paths relative to the folder)
    code: int = 2
    absent: tuple[str, ...] = ()  # paths the refusal must not create


# ---------------------------------------------------------------------------- file makers
def write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def edited_checkpoint(edit: Callable[[dict], object]) -> Callable[[Path, dict], list]:
    def make(folder: Path, files: dict) -> list:
        obj = torch.load(files["pt"], weights_only=True)
        changed = edit(obj)
        path = folder / "edited.pt"
        torch.save(obj if changed is None else changed, path)
        return ["inspect", path]

    return make


def edited_metadata(key: str, value: str | None) -> Callable[[Path, dict], list]:
    def make(folder: Path, files: dict) -> list:
        ckpt = tiny_checkpoint(14)
        metadata = checkpoint_metadata(ckpt)
        if value is None:
            del metadata[key]
        else:
            metadata[key] = value
        path = folder / "edited.safetensors"
        save_tensors(path, ckpt.state_dict, metadata, sparse=False)
        return ["inspect", path]

    return make


def onnx_with(edit: Callable[[object], None], command=("gate",), budget=("--max-bytes", "1MB")):
    def make(folder: Path, files: dict) -> list:
        import onnx

        proto = onnx.load_model_from_string(files["onnx"].read_bytes())
        edit(proto)
        path = write(folder, "model.onnx", proto.SerializeToString())
        return [*command, path, *budget]

    return make


def external_data(location: str):
    def edit(proto) -> None:
        import onnx

        init = proto.graph.initializer[0]
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", location

    return edit


def set_metadata(key: str, value: str | None):
    def edit(proto) -> None:
        props = {p.key: p.value for p in proto.metadata_props}
        if value is None:
            props.pop(key)
        else:
            props[key] = value
        del proto.metadata_props[:]
        for k, v in props.items():
            proto.metadata_props.add(key=k, value=v)

    return edit


def onnx_bytes(content: Callable[[dict], bytes], *command):
    def make(folder: Path, files: dict) -> list:
        path = write(folder, "model.onnx", content(files))
        return [*(command or ("gate",)), path, *(() if command else ("--max-bytes", "1MB"))]

    return make


def dataset(**changes) -> Callable[[Path, dict], list]:
    """An .npz made from valid arrays with ``changes`` (a value None drops the key)."""

    def make(folder: Path, files: dict) -> list:
        rng = np.random.default_rng(0)
        arrays = {
            "x_train": rng.normal(size=(12, 3, 6, 21, 1)).astype(np.float32),
            "y_train": np.arange(12) % 3,
            "x_test": rng.normal(size=(6, 3, 6, 21, 1)).astype(np.float32),
            "y_test": np.arange(6) % 3,
        }
        arrays.update(changes)
        path = folder / "data.npz"
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return ["train", "--data", path, "--epochs", "1", "-o", folder / "out.pt"]

    return make


def pyskl(edit: Callable[[dict], None]) -> Callable[[Path, dict], list]:
    def make(folder: Path, files: dict) -> list:
        content = pickle.loads(files["pkl"].read_bytes())
        edit(content)
        path = write(folder, "annotations.pkl", pickle.dumps(content, 4))
        return ["train", "--data", f"{path}?layout=coco17", "--epochs", "1", "-o", folder / "o.pt"]

    return make


def data_file(name: str, content: Callable[[dict], bytes]) -> Callable[[Path, dict], list]:
    def make(folder: Path, files: dict) -> list:
        path = write(folder, name, content(files))
        return ["train", "--data", path, "--epochs", "1", "-o", folder / "out.pt"]

    return make


def train(*flags: str) -> Callable[[Path, dict], list]:
    return lambda folder, files: ["train", "--data", TINY, "-o", folder / "out.pt", *flags]


def prune(*flags: str) -> Callable[[Path, dict], list]:
    return lambda folder, files: [
        "prune", files["pt14"], "--data", TINY, "-o", folder / "out.pt", *flags,
    ]  # fmt: skip


class AllowedGlobalsBomb:
    """Pickles to numpy's own array rebuilder asking for a 1 TiB array."""

    def __reduce__(self):
        return np.zeros(1).__reduce__()[0], (np.ndarray, (2**40,), b"b")


class CallsNdarray:
    def __reduce__(self):
        return np.ndarray, ((2**40,),)


class RunsCode:
    def __reduce__(self):
        return eval, ("print('this ran')",)


def pickled(obj) -> Callable[[dict], bytes]:
    return lambda files: pickle.dumps({"split": {}, "annotations": [obj]}, 2)


def zip_bomb(files: dict) -> bytes:
    """A real checkpoint's zip with one more member: 64 MB of zeros, deflated to ~64 KB."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(files["pt"]) as original,
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bomb,
    ):
        for info in original.infolist():
            bomb.writestr(info.filename, original.read(info))
        bomb.writestr("archive/data/99", bytes(64 * 2**20))
    return buffer.getvalue()


def sparse_bomb(files: dict) -> bytes:
    """A valid sparse safetensors file whose manifest decodes to 4 TB of zeros."""
    import safetensors.torch

    manifest = {"version": 2, "tensors": [["w", "F32", [1, 2**40], "csr", "U8", "U8"]]}
    blob = torch.zeros(2, dtype=torch.uint8)  # the two row pointers of one empty row
    return safetensors.torch.save({SPARSE_KEY: blob}, {SPARSE_KEY: json.dumps(manifest)})


def npz_lying_header(files: dict) -> bytes:
    """An .npz whose y_train.npy header claims 2**40 labels (the member holds two)."""
    labels = io.BytesIO()
    header = {"descr": "<i8", "fortran_order": False, "shape": (2**40,)}
    np.lib.format.write_array_header_1_0(labels, header)
    labels.write(np.arange(2).tobytes())
    skeletons = io.BytesIO()
    np.save(skeletons, np.zeros((2, 3, 4, 21, 1), np.float32))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x_train.npy", skeletons.getvalue())
        archive.writestr("y_train.npy", labels.getvalue())
    return buffer.getvalue()


def corrupt_npz(files: dict) -> bytes:
    data = bytearray(files["npz"].read_bytes())
    data[30:34] = b"\xff\xff\xff\xff"  # inside the first local file header's name
    return bytes(data)


def sweep(*flags: str, model: str = "pt14") -> Callable[[Path, dict], list]:
    def make(folder: Path, files: dict) -> list:
        source = files[model] if model in files else folder / model
        return ["sweep", source, "--data", TINY, "-o", folder / "sweep", "--epochs", "1", *flags]

    return make


def gate_config(text: str) -> Callable[[Path, dict], list]:
    def make(folder: Path, files: dict) -> list:
        write(folder, "gcnshrink.toml", text.encode())
        return ["gate", files["sparse"], "--config-dir", folder]

    return make


def existing_folder(folder: Path, files: dict) -> list:
    (folder / "taken.pt").mkdir()
    return ["train", "--data", TINY, "-o", folder / "taken.pt", "--force"]


def under_a_file(folder: Path, files: dict) -> list:
    write(folder, "notes.txt", b"a file, not a folder")
    return ["train", "--data", TINY, "-o", folder / "notes.txt" / "out.pt"]


def export_over_summary(folder: Path, files: dict) -> list:
    write(folder, "exported/export.json", b"{}")
    return ["export", files["pt14"], "--safetensors", "--data", TINY, "-o", folder / "exported"]


def code_running_pt(folder: Path, files: dict) -> list:
    path = folder / "evil.pt"
    torch.save({"state_dict": RunsCode()}, path)
    return ["inspect", path]


def wider_than_weights(obj: dict) -> None:
    obj["config"]["hidden"] = 65536  # allowed by the config, 4 GB of weights, none in the file


# ---------------------------------------------------------------------------- the table
ONNX, EDITED, BOMBS, DATA, ARGS, OUTPUTS, MESSAGES = (
    "ONNX files",
    "Edited checkpoints and metadata",
    "Resource bombs",
    "Data",
    "Arguments",
    "Outputs",
    "Messages",
)
CASES = [
    Case(ONNX, "random bytes", onnx_bytes(lambda f: bytes(range(256)) * 8), "is not an ONNX model"),
    Case(ONNX, "a truncated model", onnx_bytes(lambda f: f["onnx"].read_bytes()[:200]),
         "is not an ONNX model"),
    Case(ONNX, "a safetensors file named .onnx", onnx_bytes(lambda f: f["sparse"].read_bytes()),
         "is not an ONNX model"),
    Case(ONNX, "an empty file (0 bytes)", onnx_bytes(lambda f: b""),
         "is not an ONNX model (no graph with nodes, inputs and outputs)"),
    Case(ONNX, "external data at an absolute path", onnx_with(external_data("/etc/passwd")),
         "refers to the external data file '/etc/passwd'; gcnshrink reads self-contained"),
    Case(ONNX, "external data at ../", onnx_with(external_data("../secret.bin"), ("inspect",), ()),
         "refers to the external data file '../secret.bin'"),
    Case(ONNX, "external data through a symbolic link",
         onnx_with(external_data("link.bin"), ("eval",), ("--data", TINY)),
         "refers to the external data file 'link.bin'"),
    Case(ONNX, "metadata config that is not JSON", onnx_with(set_metadata("config", "{"), ("inspect",), ()),
         "broken gcnshrink metadata ('config' is not JSON)"),
    Case(ONNX, "metadata without the architecture", onnx_with(set_metadata("arch", None), budget=("--max-flops", "1G")),
         "broken gcnshrink metadata (no 'arch')"),
    Case(ONNX, "metadata describing a model far larger than the file",
         onnx_with(set_metadata("config", json.dumps(
             {"layout": "hand21", "num_classes": 3, "hidden": 65536, "heads": 64, "head_width": 1024}
         )), budget=("--max-flops", "1G")),
         "far more than the file can hold"),
    Case(EDITED, "config width 10^9", edited_checkpoint(lambda o: o["config"].update(hidden=10**9)),
         "hidden must be between 0 and 65536, got 1000000000"),
    Case(EDITED, "negative config width", edited_checkpoint(lambda o: o["config"].update(hidden=-5)),
         "hidden must be between 0 and 65536, got -5"),
    Case(EDITED, "config width 65536 (4 GB of weights) over a small state",
         edited_checkpoint(wider_than_weights), "shape mismatch"),
    Case(EDITED, "a layout without its fields", edited_checkpoint(lambda o: o["config"].update(layout={})),
         "layout is not a valid skeleton layout"),
    Case(EDITED, "class names that are a number", edited_checkpoint(lambda o: o.update(class_names=5)),
         "'class_names' must be a list of strings"),
    Case(EDITED, "provenance that is a list", edited_checkpoint(lambda o: o.update(provenance=[1])),
         "'provenance' must be a dict, got list"),
    Case(EDITED, "a state dict that is a list", edited_checkpoint(lambda o: o.update(state_dict=[1])),
         "'state_dict' must be a dict, got list"),
    Case(EDITED, "a state dict holding a list",
         edited_checkpoint(lambda o: o["state_dict"].update({"blocks.0.query.weight": [1.0]})),
         "state_dict entry 'blocks.0.query.weight' is a list, not a tensor"),
    Case(EDITED, "safetensors class names that are a number", edited_metadata("class_names", "5"),
         "'class_names' must be a list of strings"),
    Case(EDITED, "safetensors config that is not JSON", edited_metadata("config", "{"),
         "broken gcnshrink metadata ('config' is not JSON)"),
    Case(BOMBS, "a pickle asking numpy's rebuilder for 1 TiB",
         data_file("bomb.pkl", pickled(AllowedGlobalsBomb())),
         "refusing to load bomb.pkl: an array of shape (1099511627776,)"),
    Case(BOMBS, "a pickle calling numpy.ndarray itself", data_file("bomb.pkl", pickled(CallsNdarray())),
         "refusing to load bomb.pkl: it calls numpy.ndarray(...) itself"),
    Case(BOMBS, "a 100 KB .pt zip expanding to 64 MB",
         lambda folder, files: ["inspect", write(folder, "bomb.pt", zip_bomb(files))],
         "(torch.save never compresses; this looks like a zip bomb)"),
    Case(BOMBS, "a sparse safetensors decoding to 4 TB",
         lambda folder, files: ["inspect", write(folder, "bomb.sparse.safetensors", sparse_bomb(files))],
         "refusing to allocate it"),
    Case(BOMBS, "an .npz header claiming 2^40 labels", data_file("bomb.npz", npz_lying_header),
         "'y_train' claims shape (1099511627776,)"),
    Case(DATA, "an empty train split", dataset(x_train=np.zeros((0, 3, 6, 21, 1), np.float32), y_train=np.zeros(0, int)),
         "key 'x_train': no samples (an empty split)"),
    Case(DATA, "an empty test split", dataset(x_test=np.zeros((0, 3, 6, 21, 1), np.float32), y_test=np.zeros(0, int)),
         "key 'x_test': no samples (an empty split)"),
    Case(DATA, "sequences of 0 frames", dataset(x_train=np.zeros((12, 3, 0, 21, 1), np.float32)),
         "have no frames"),
    Case(DATA, "one sample per class (no validation split)",
         dataset(x_train=np.ones((3, 3, 6, 21, 1), np.float32), y_train=np.arange(3)),
         "the validation split is empty"),
    Case(DATA, "a class id of 2^40", dataset(y_test=np.array([0, 1, 2, 0, 1, 2**40])),
         "class id 1099511627776 is implausibly large"),
    Case(DATA, "pyskl: a list where a clip name belongs",
         pyskl(lambda c: c["annotations"][0].update(frame_dir=["clip0"])),
         "annotations[0]['frame_dir'] must be a string, got list"),
    Case(DATA, "pyskl: a split that is a string", pyskl(lambda c: c["split"].update(xsub_train="clip0")),
         "split 'xsub_train' must be a list of clip names"),
    Case(DATA, "a corrupt zip header inside an .npz", data_file("data.npz", corrupt_npz),
         "not a readable .npz"),
    Case(DATA, "an .npz named .pkl", data_file("data.pkl", lambda f: f["npz"].read_bytes()),
         "is a zip archive (an .npz or a .pt file?), not a pickle"),
    Case(ARGS, "--batch-size 0", train("--batch-size", "0"), "--batch-size must be at least 1, got 0"),
    Case(ARGS, "--batch-size -1", prune("--batch-size", "-1"), "--batch-size must be at least 1, got -1"),
    Case(ARGS, "--lr nan", train("--lr", "nan"), "--lr must be a finite number above 0, got nan"),
    Case(ARGS, "--lr -0.1", prune("--lr", "-0.1"), "--lr must be a finite number above 0, got -0.1"),
    Case(ARGS, "--device tpu", train("--device", "tpu"), "--device 'tpu' is not a device"),
    Case(ARGS, "--seed -1", train("--seed", "-1"), "--seed must be between 0 and"),
    Case(ARGS, "--set heads=abc", train("--set", "heads=abc"), "heads must be an integer, got 'abc'"),
    Case(ARGS, "--set bogus=1", train("--set", "bogus=1"), "unknown config key 'bogus'"),
    Case(ARGS, "--set heads=0", train("--set", "heads=0"), "heads must be between 1 and"),
    Case(ARGS, "--rate abc", prune("--rate", "abc"), "Invalid value for '--rate'"),
    Case(ARGS, "max_bytes = 1e300 in gcnshrink.toml", gate_config("[gate]\nmax_bytes = 1e300\n"),
         "max_bytes: 1e+300 is implausibly large"),
    Case(ARGS, "--rates 0.5,0.5 in a sweep", sweep("--rates", "0.5,0.5", "--methods", "mp"),
         "--rates lists 0.5 twice", absent=("sweep",)),
    Case(ARGS, "--rates 0.9,0.9 in prune", prune("--rates", "0.9,0.9"), "--rates lists 0.9 twice"),
    Case(ARGS, "--rates '' (an empty shell variable) in prune", prune("--method", "mrmp", "--rates", ""),
         "--rates names no value"),
    Case(ARGS, "--rates 0.5,,0.9 in prune", prune("--method", "mrmp", "--rates", "0.5,,0.9"),
         "--rates '0.5,,0.9' has an empty entry"),
    Case(ARGS, "--temperature-end inf in prune", prune("--method", "ctf", "--temperature-end", "inf"),
         "--temperature-end must be a finite number above 0, got inf"),
    Case(OUTPUTS, "-o an existing folder (with --force)", existing_folder,
         "taken.pt is a folder, expected a file path"),
    Case(OUTPUTS, "-o inside a file", under_a_file, "notes.txt is not a folder", absent=("out.pt",)),
    Case(OUTPUTS, "export over an existing export.json", export_over_summary,
         "exported/export.json exists; pass --force to overwrite it"),
    Case(OUTPUTS, "a refused sweep (missing model)", sweep(model="missing.pt"), "missing.pt: no such file",
         absent=("sweep",)),
    Case(OUTPUTS, "a refused demo (--rate 2)",
         lambda folder, files: ["demo", "--rate", "2", "-o", folder / "demo"],
         "--rate must be a number strictly between 0 and 1", absent=("demo",)),
    Case(MESSAGES, "a .pt whose pickle calls eval", code_running_pt,
         "refusing to load evil.pt: it references eval, which could run code"),
]  # fmt: skip

# Checked by the interruption tests below; in the table with the rows above.
INTERRUPTS = {
    "sigterm-prune": Case(
        "Interruptions", "SIGTERM (or Ctrl-C: exit 130) during prune", prune(),
        "terminated; the run's state after epoch 1 is in out.state.pt; rerun the same command "
        "with --resume out.state.pt to continue", code=143,
    ),
    "sweep": Case(
        "Interruptions", "Ctrl-C during a sweep, after some cells", sweep(),
        "interrupted; the finished cells in sweep/cells are kept; rerun the same command to "
        "continue", code=130,
    ),
    "save": Case(
        "Interruptions", "SIGTERM while a file is written", train(),
        "terminated; no output was written", code=143,
    ),
}  # fmt: skip


def case_id(case: Case) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{case.klass[:5]} {case.what}".lower()).strip("-")


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Valid small files the cases start from (a gcn of 3 classes, one of 14 for TINY)."""
    from gcnshrink.fuzz import seed_files

    folder = tmp_path_factory.mktemp("valid")
    found = seed_files(folder)
    found["pt14"] = save_checkpoint(tiny_checkpoint(14), folder / "gcn14.pt")
    return found


def stderr_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_hostile_input_is_one_line_and_its_exit_code(case, cli, files, tmp_path, monkeypatch):
    """...before any training: a refusal after minutes of training loses those minutes."""
    from gcnshrink.train import TrainingLoop

    def trains(self):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(TrainingLoop, "run", trains)
    monkeypatch.chdir(tmp_path)
    if case.what.endswith("symbolic link"):
        (tmp_path / "link.bin").symlink_to("/etc/passwd")
    result = cli(*case.make(tmp_path, files))
    assert result.exit_code == case.code, (result.exit_code, result.output[-2000:])
    line = stderr_line(result).replace(f"{tmp_path}{os.sep}", "")
    assert case.message in line, line
    assert result.stdout.strip() == ""
    for name in case.absent:
        assert not (tmp_path / name).exists(), name


def test_gate_never_judges_a_model_it_could_not_read(cli, files, tmp_path):
    """Exit 2, never 0 (within budget) or 1 (over budget), for every unreadable ONNX file,
    whatever the budget."""
    gated = [case for case in CASES if case.klass == ONNX]
    for index, case in enumerate(gated):
        folder = tmp_path / str(index)
        folder.mkdir()
        if case.what.endswith("symbolic link"):
            (folder / "link.bin").symlink_to("/etc/passwd")
        model = next(a for a in case.make(folder, files) if str(a).endswith(".onnx"))
        for budget in (("--max-bytes", "1GB"), ("--max-nonzero", "0"), ("--max-params", "1T")):
            assert cli("gate", model, *budget).exit_code == 2, (case.what, budget)


# ---------------------------------------------------------------------------- the docs table
def shown_command(argv: list, folders: tuple[Path, ...]) -> str:
    parts = []
    for arg in argv:
        text = str(arg)
        for folder in folders:
            text = "." if text == str(folder) else text.replace(f"{folder}{os.sep}", "")
        parts.append(text or "''")  # an empty argument, as a shell user types it
    return " ".join(["gcnshrink", *parts])


def render_table(files: dict[str, Path], scratch: Path) -> str:
    """The table of docs/security.md, from the rows the tests check."""
    rows = [
        "| class | input | command | exit | message (the one line on stderr contains) |",
        "|---|---|---|---|---|",
    ]
    for index, case in enumerate([*CASES, *INTERRUPTS.values()]):
        folder = scratch / str(index)
        folder.mkdir()
        command = shown_command(case.make(folder, files), (folder, files["pt"].parent))
        message = case.message.replace("|", "\\|")
        rows.append(f"| {case.klass} | {case.what} | `{command}` | {case.code} | {message} |")
    return "\n".join(rows)


def test_docs_table_is_the_checked_table(files, tmp_path):
    table = render_table(files, tmp_path)
    text = DOCS.read_text()
    head, rest = text.split(TABLE_START)
    _, tail = rest.split(TABLE_END)
    if os.environ.get("GCNSHRINK_WRITE_DOCS"):
        DOCS.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}")
        return
    assert rest.split(TABLE_END)[0].strip() == table, (
        "docs/security.md's table differs from the checked cases; rerun this test with "
        "GCNSHRINK_WRITE_DOCS=1 to rewrite it"
    )


def test_refusing_code_names_the_global_and_gives_no_advice(cli, files, tmp_path):
    line = stderr_line(cli(*code_running_pt(tmp_path, files)))
    assert "eval" in line and "could run code" in line
    for advice in ("weights_only", "trust", "safe_globals", "allowlist"):
        assert advice not in line


# ---------------------------------------------------------------------------- interruptions
TINY_GCN = (
    "--set", "num_blocks=2", "--set", "heads=8", "--set", "head_width=2", "--set", "key_width=1",
    "--set", "hidden=16",
)  # fmt: skip
PRUNE_RUN = ("--method", "tcp", "--rate", "0.9", "--epochs", "3", "--batch-size", "8", "--json")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def test_sigterm_during_prune_keeps_its_state_and_resume_gives_the_same_result(
    cli, files, tmp_path, monkeypatch
):
    from gcnshrink.train import PeriodicState

    full = tmp_path / "full"
    full.mkdir()
    uninterrupted = cli(*prune()(full, files), *PRUNE_RUN)
    assert uninterrupted.exit_code == 0, uninterrupted.output[-2000:]

    case = INTERRUPTS["sigterm-prune"]
    write_state = PeriodicState.on_epoch_end

    def terminate_after_epoch_1(self, loop, record):
        write_state(self, loop, record)
        if loop.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # what CI does to a cancelled job

    monkeypatch.setattr(PeriodicState, "on_epoch_end", terminate_after_epoch_1)
    monkeypatch.chdir(tmp_path)
    stopped = cli(*case.make(tmp_path, files), *PRUNE_RUN)
    assert stopped.exit_code == case.code, stopped.output[-2000:]
    assert case.message in stderr_line(stopped).replace(f"{tmp_path}{os.sep}", "")
    assert not (tmp_path / "out.pt").exists()
    assert (tmp_path / "out.state.pt").is_file()
    assert leftovers(tmp_path) == []

    monkeypatch.setattr(PeriodicState, "on_epoch_end", write_state)
    again = cli(*case.make(tmp_path, files), *PRUNE_RUN)
    assert again.exit_code == 2 and "--resume" in stderr_line(again)  # the state is not lost
    resumed = cli(*case.make(tmp_path, files), *PRUNE_RUN, "--resume", tmp_path / "out.state.pt")
    assert resumed.exit_code == 0, resumed.output[-2000:]
    assert not (tmp_path / "out.state.pt").exists()
    want, got = json.loads(uninterrupted.stdout), json.loads(resumed.stdout)
    assert (got["accuracy"], got["best_epoch"]) == (want["accuracy"], want["best_epoch"])
    a, b = load_checkpoint(full / "out.pt"), load_checkpoint(tmp_path / "out.pt")
    assert a.masks.keys() == b.masks.keys()
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert (full / "out.pt").read_bytes() == (tmp_path / "out.pt").read_bytes()


def test_resume_refuses_a_state_of_another_run(cli, files, tmp_path):
    state = tmp_path / "other.state.pt"
    torch.save({"format": "gcnshrink.train-state/1", "config": {"epochs": 9, "seed": 0}}, state)
    line = stderr_line(cli(*prune()(tmp_path, files), *PRUNE_RUN, "--resume", state))
    assert "pass the same --epochs and --seed" in line or "broken training state" in line
    assert state.exists()  # the user's file stays


def test_sigterm_while_a_file_is_written_leaves_no_temporary_file(cli, tmp_path, monkeypatch):
    import gcnshrink.files

    case = INTERRUPTS["save"]

    def terminated_fsync(fd):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(gcnshrink.files.os, "fsync", terminated_fsync)
    monkeypatch.chdir(tmp_path)
    result = cli(*case.make(tmp_path, {}), "--epochs", "2", "--batch-size", "8", *TINY_GCN)
    assert result.exit_code == case.code, result.output[-2000:]
    assert case.message in stderr_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_interrupted_save_keeps_the_old_file(tmp_path):
    target = write(tmp_path, "m.pt", b"the old checkpoint")

    def interrupted(f):
        f.write(b"half of the new")
        raise cli_module.Interrupted()

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted, force=True)
    assert target.read_bytes() == b"the old checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_an_interrupted_sweep_says_its_cells_are_kept(cli, files, tmp_path, monkeypatch):
    import gcnshrink.api

    case = INTERRUPTS["sweep"]

    def sweep_one_cell(model, data, out, **kwargs):
        write(Path(out), "cells/mp-r0.9-s0.json", b"{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gcnshrink.api, "sweep", sweep_one_cell)
    result = cli(*case.make(tmp_path, files))
    assert result.exit_code == case.code
    line = stderr_line(result).replace(f"{tmp_path}{os.sep}", "")
    assert case.message in line and "no output was written" not in line


# ---------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-folder"])
def test_a_full_disk_leaves_no_half_set_of_exported_files(
    existing, cli, files, tmp_path, monkeypatch
):
    import gcnshrink.export

    out = tmp_path / "deep" / "exported"
    if existing:
        write(out, "model.safetensors", b"the old export")
    save = gcnshrink.export.save_tensors
    calls = []

    def disk_fills_up(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return save(path, *args, **kwargs)

    monkeypatch.setattr(gcnshrink.export, "save_tensors", disk_fills_up)
    flags = ("--safetensors", "--sparse", "--data", TINY, "-o", out, "--force")
    result = cli("export", files["pt14"], *flags)
    assert result.exit_code == 2
    assert "No space left on device" in stderr_line(result)
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
        assert (out / "model.safetensors").read_bytes() == b"the old export"
    else:
        assert not (tmp_path / "deep").exists()  # nor the folders made for it
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- reproducibility
def test_the_same_command_and_seed_give_the_same_bytes(cli, files, tmp_path):
    for name in ("a", "b"):
        flags = ("--epochs", "2", "--batch-size", "8", *TINY_GCN)
        trained = cli("train", "--data", TINY, "-o", tmp_path / f"train-{name}.pt", *flags)
        assert trained.exit_code == 0, trained.output[-2000:]
        pruned = cli(
            *prune()(tmp_path, files)[:-2], "-o", tmp_path / f"prune-{name}.pt", *PRUNE_RUN
        )
        assert pruned.exit_code == 0, pruned.output[-2000:]
        exported = cli(
            "export", tmp_path / f"prune-{name}.pt", "--safetensors", "--sparse", "--data", TINY,
            "-o", tmp_path / f"export-{name}",
        )  # fmt: skip
        assert exported.exit_code == 0, exported.output[-2000:]
    for produced in ("train-{}.pt", "prune-{}.pt", "export-{}/model.safetensors",
                     "export-{}/model.sparse.safetensors"):  # fmt: skip
        first, second = (tmp_path / produced.format(n) for n in "ab")
        assert first.read_bytes() == second.read_bytes(), produced
    with zipfile.ZipFile(tmp_path / "train-a.pt") as archive:
        assert {name.split("/")[0] for name in archive.namelist()} == {"archive"}
    assert "finetune_seconds" not in load_checkpoint(tmp_path / "prune-a.pt").pruning


def test_safetensors_metadata_comes_out_in_one_order(tmp_path):
    ckpt = tiny_checkpoint()
    metadata = {f"key{i}": str(i) for i in range(12)} | checkpoint_metadata(ckpt)
    for sparse in (False, True):
        outputs = set()
        for attempt in range(6):
            path = tmp_path / f"{sparse}-{attempt}.safetensors"
            save_tensors(path, ckpt.state_dict, metadata, sparse=sparse)
            outputs.add(path.read_bytes())
        assert len(outputs) == 1


def test_train_refuses_to_overwrite_an_interrupted_runs_state(cli, tmp_path):
    write(tmp_path, "out.state.pt", b"an interrupted run's state")
    line = stderr_line(cli(*train()(tmp_path, {})))
    assert "--resume" in line and "out.state.pt" in line
    assert (tmp_path / "out.state.pt").read_bytes() == b"an interrupted run's state"


def test_a_state_file_is_refused_cleanly_when_it_is_not_one(cli, files, tmp_path):
    bogus = write(tmp_path, "bogus.pt", b"not a state")
    line = stderr_line(cli(*prune()(tmp_path, files), *PRUNE_RUN, "--resume", bogus))
    assert "bogus.pt" in line
    with pytest.raises(GcnshrinkError):
        from gcnshrink.prune import check_resume_state

        check_resume_state(bogus, torch.nn.Linear(1, 1), None)


@pytest.mark.parametrize("arch", ["gcn", "stgcn", "agcn", "aagcn", "ctrgcn", "pyskl_stgcn"])
def test_edited_foreign_state_dict_is_refused_in_one_line(arch, tmp_path):
    """A bare state dict of a zoo model with a tensor removed, or replaced by a scalar, is bad
    input: one GcnshrinkError line whichever tensor it is (the width inference used to raise
    KeyError / IndexError tracebacks)."""
    from gcnshrink.models import create_model, model_class

    state = create_model(arch, **model_class(arch).tiny_config()).state_dict()
    weights = [k for k, v in state.items() if k.endswith(".weight") and v.dim() >= 2]
    path = tmp_path / "edited.pt"
    for key in weights[:3] + weights[-2:]:
        for edit in ("drop", "scalar"):
            edited = {k: v for k, v in state.items() if not (k == key and edit == "drop")}
            if edit == "scalar":
                edited[key] = torch.zeros(())
            torch.save(edited, path)
            try:
                load_checkpoint(path).build_model()
            except GcnshrinkError as exc:
                assert "\n" not in str(exc), str(exc)
