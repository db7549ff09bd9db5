"""The teacher of a distillation run (`--objective distill --teacher FOLDER`): found and checked
against the run's tokenizer and `Vocab` before any expensive work, then loaded frozen beside the
student in a `headway.models.distiller.Distiller`.

A teacher is a headway run or checkpoint folder (the model `headway.train.runs.load_run` loads), or
a local HuggingFace causal-LM folder (config.json and weights, built as `--init` builds one: the
architecture `hf:FOLDER` with the checkpoint's rows, headway's specials at the mean of them). Both
models must score the same ids: the same tokenizer (the sha256 of its tokenizer.json) and the same
`Vocab` (base size, specials, sentinel count). A new run with the default `--tokenizer bpe` takes
the teacher's tokenizer instead of training its own; a headway teacher's folder is pinned to the
checkpoint it names now (a run folder's latest), so a resumed run reloads the very same teacher.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from headway.types import Vocab

TEACHER_HELP = "a headway run or checkpoint folder, or a local HuggingFace causal-LM folder (config.json)"


def teacher_folder(path: str) -> tuple[str, Path]:
    """("run", the checkpoint folder) for a headway run or checkpoint folder, ("hf", the folder) for a
    HuggingFace one; a ValueError naming --teacher otherwise."""
    p = Path(path).expanduser()
    if (p / "state.json").is_file():
        return "run", p.resolve()
    if (p / "latest").is_file():
        from headway.train.checkpoint import resolve

        return "run", resolve(p).resolve()
    if (p / "config.json").is_file() and ((p / "model.safetensors").exists() or any(p.glob("*.safetensors"))
                                          or any(p.glob("*.bin"))):
        return "hf", p.resolve()
    raise ValueError(f"--teacher must be {TEACHER_HELP}, got {path!r} (no state.json, latest or config.json with "
                     "weights there)")


def check_config(cfg: Any, reads_teacher: bool, parts: int) -> None:
    """The checks of a distillation run's flags that need no file opened beyond the teacher folder's
    names (TrainConfig.check): a ValueError naming the flag."""
    if not reads_teacher:
        return
    if parts > 1:
        raise ValueError(f"--objective {cfg.objective}: distill cannot be mixed with other objectives. Its examples "
                         "are CLM's and its loss is the whole batch's (the student against the teacher at every "
                         "target), so a mixture could only change the share of plain cross-entropy, which "
                         "--distill-alpha already sets (clm:0.5,distill:0.5 would be --objective distill with half "
                         "the --distill-alpha, in expectation)")
    if not cfg.teacher:
        raise ValueError(f"--teacher must be given with --objective distill: {TEACHER_HELP}")
    teacher_folder(cfg.teacher)
    if cfg.z_loss:
        raise ValueError(f"--z-loss must be 0 with --objective distill (the distillation loss has no z-loss term), "
                         f"got {cfg.z_loss!r}")
    if cfg.tensor_parallel_head:
        raise ValueError("--tensor-parallel-head cannot be used with --objective distill: the fused distillation "
                         "loss compares the teacher's and the student's distributions over the whole vocabulary, "
                         "and the vocabulary-parallel head splits the vocabulary over ranks. Distill with DDP or "
                         "FSDP (--parallel ddp | fsdp) without --tensor-parallel-head")
    if cfg.mtp_depth:
        raise ValueError(f"--mtp-depth {cfg.mtp_depth} cannot be used with --objective distill: the distillation "
                         "loss trains the student's main head against the teacher and has no term for multi-token "
                         "prediction depths, which would be built and never trained; use --mtp-depth 0")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def teacher_tokenizer(kind: str, folder: Path) -> tuple[str, str]:
    """(sha256 of the teacher's tokenizer.json as a run would hold it, the --tokenizer value that gives a
    run that tokenizer)."""
    from headway.data.tokenizer import external_tokenizer_json, load_tokenizer

    if kind == "run":
        is_bytes = load_tokenizer(folder).kind == "bytes"
        return _sha((folder / "tokenizer.json").read_bytes()), "bytes" if is_bytes else str(folder / "tokenizer.json")
    return _sha(external_tokenizer_json(folder).encode("utf-8")), str(folder)


def _student_tokenizer_sha(cfg: Any) -> str | None:
    """The sha256 of the tokenizer.json a new run will train with, known before preparing its data:
    a prepared --data folder's, the byte tokenizer's, or the --tokenizer PATH's; None for one still to
    be trained (bpe)."""
    from headway.data.prepare import is_prepared, open_prepared
    from headway.data.tokenizer import ByteTokenizer, external_tokenizer_json

    if len(cfg.data) == 1 and is_prepared(Path(cfg.data[0])):
        return open_prepared(Path(cfg.data[0]), verify=False).manifest["tokenizer"]["sha256"]
    if cfg.tokenizer == "bytes":
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            ByteTokenizer().save(Path(d))
            return _sha((Path(d) / "tokenizer.json").read_bytes())
    if cfg.tokenizer == "bpe":
        return None
    return _sha(external_tokenizer_json(cfg.tokenizer).encode("utf-8"))


def _teacher_vocab(kind: str, folder: Path, student: Vocab | None, tokenizer: Any) -> Vocab:
    """The teacher's Vocab: a headway run's own (its tokenizer, objective, row length and saved special
    rows); an HF folder is built from the student's, so it has the student's."""
    if kind == "hf":
        assert student is not None
        return student
    from headway.train.config import TrainConfig
    from headway.train.data import run_vocab

    return run_vocab(tokenizer, TrainConfig.load(folder / "config.json"), folder)


def _refuse_vocab(teacher: Vocab, student: Vocab, folder: Path) -> None:
    if teacher != student:
        raise ValueError(f"--teacher {folder}: its Vocab (base {teacher.base_size}, specials {len(teacher.specials)}, "
                         f"{teacher.num_sentinels} sentinels) is not the run's (base {student.base_size}, specials "
                         f"{len(student.specials)}, {student.num_sentinels} sentinels); distillation compares the two "
                         "models' distributions id by id. Use a teacher trained with the same tokenizer whose "
                         "--objective and --seq-len give the same sentinel count")


def _refuse_tokenizer(teacher_sha: str, student_sha: str, folder: Path, student: str) -> None:
    if teacher_sha != student_sha:
        raise ValueError(f"--teacher {folder}: its tokenizer (tokenizer.json sha256 {teacher_sha[:12]}) is not the "
                         f"run's ({student}: sha256 {student_sha[:12]}); distillation compares the two models' "
                         "distributions id by id. Train the student on the teacher's prepared data (--data "
                         "TEACHER_RUN/data) or with its tokenizer (--tokenizer TEACHER_RUN/tokenizer.json)")


def resolve_teacher(cfg: Any, log: Any = print) -> None:
    """A new distillation run, before its data is prepared: pin the teacher's checkpoint folder (absolute)
    in the config, take the teacher's tokenizer when the run would train its own (default --tokenizer
    bpe), and refuse, by name, a teacher with another tokenizer or Vocab."""
    from headway.data.tokenizer import load_tokenizer
    from headway.objectives import sentinels_for

    kind, folder = teacher_folder(cfg.teacher)
    cfg.teacher = str(folder)
    sha, tokenizer_flag = teacher_tokenizer(kind, folder)
    student_sha = _student_tokenizer_sha(cfg)
    if student_sha is None:
        cfg.tokenizer = tokenizer_flag
        log(f"distill: the run takes the teacher's tokenizer (--tokenizer {tokenizer_flag})")
        student_sha = sha
    _refuse_tokenizer(sha, student_sha, folder, "--data" if cfg.data else "--tokenizer")
    if kind == "run":
        tok = load_tokenizer(folder)
        student = Vocab.from_tokenizer(tok, num_sentinels=sentinels_for(cfg.objective, cfg.seq_len))
        _refuse_vocab(_teacher_vocab(kind, folder, None, tok), student, folder)


def load_teacher(cfg: Any, data: Any) -> Any:
    """The frozen teacher of `cfg.teacher` (a `LanguageModel` in eval mode, on the CPU), after checking
    it against the run's data (`RunData`: its prepared tokenizer and Vocab) — on every start, resumed
    ones included, so a teacher folder changed since is refused by name."""
    kind, folder = teacher_folder(cfg.teacher)
    sha, _ = teacher_tokenizer(kind, folder)
    _refuse_tokenizer(sha, data.prepared.manifest["tokenizer"]["sha256"], folder, "the run's data")
    if kind == "run":
        from headway.data.tokenizer import load_tokenizer
        from headway.train.runs import load_run

        _refuse_vocab(_teacher_vocab(kind, folder, None, load_tokenizer(folder)), data.vocab, folder)
        teacher = load_run(folder, generating=True)[0]
    else:
        from headway.models import build_model

        teacher = build_model(data.vocab, f"hf:{folder}", init=str(folder)).eval()
    return teacher.requires_grad_(False)


def with_teacher(model: Any, cfg: Any, data: Any, teacher: Any = None) -> Any:
    """`model` (the student) and the teacher of `cfg.teacher` (or `teacher`, one already loaded by
    `load_teacher`) in a `Distiller` with the run's --distill-alpha, --distill-temperature,
    --distill-loss and --distill-beta."""
    from headway.models.distiller import Distiller

    teacher = load_teacher(cfg, data) if teacher is None else teacher
    return Distiller(model, teacher, alpha=cfg.distill_alpha, temperature=cfg.distill_temperature,
                     kind=cfg.distill_loss, beta=cfg.distill_beta)
