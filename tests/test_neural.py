"""Learned engines: the Wav2Lip network's layout, and loading checkpoints safely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from lipsync_stream.neural.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lipsync_stream.neural.wav2lip import Wav2Lip  # noqa: E402

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "models" / "wav2lip.keys.tsv"


def public_layout() -> list[tuple[str, str]]:
    rows = [line.rstrip("\n").split("\t") for line in KEYS_FILE.read_text().splitlines() if line and not line.startswith("#")]
    return [(key, shape) for key, shape in rows]


@pytest.mark.skipif(not KEYS_FILE.exists(), reason="needs ../shared/models/wav2lip.keys.tsv beside the checkout")
def test_state_dict_is_exactly_the_public_checkpoint_layout() -> None:
    model = Wav2Lip()
    ours = [(k, "x".join(map(str, v.shape)) or "scalar") for k, v in model.state_dict().items()]
    assert ours == public_layout()  # every key, in order, with its shape: 352 entries
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 36_298_035


def test_a_face_and_200_ms_of_mel_give_a_96_pixel_face() -> None:
    model = Wav2Lip().eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 80, 16), torch.rand(3, 6, 96, 96))
    assert out.shape == (3, 3, 96, 96) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0


class RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/lipsync-stream-ckpt-pwned",))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-weight model saved in every format people have, and files that are not one."""
    d = tmp_path_factory.mktemp("ckpt")
    model = Wav2Lip()
    state = model.state_dict()
    paths = {name: d / f"{name}.pth" for name in ["training", "bare", "dataparallel", "code", "torchscript", "truncated", "shapes", "keys", "empty"]}
    torch.save({"state_dict": state, "optimizer": {"state": {}, "param_groups": []}, "global_step": 1}, paths["training"])
    torch.save(state, paths["bare"])
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, paths["dataparallel"])
    torch.save({"state_dict": state, "extra": RunsCode()}, paths["code"])
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), paths["torchscript"])
    data = paths["bare"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 3])
    torch.save({**state, "output_block.1.weight": torch.zeros(3, 32, 3, 3)}, paths["shapes"])
    torch.save({("x." + k if "audio_encoder.3." in k else k): v for k, v in state.items()}, paths["keys"])
    torch.save({}, paths["empty"])
    return paths


@pytest.mark.parametrize("name", ["training", "bare", "dataparallel"])
def test_every_published_format_loads_the_same_weights(checkpoints: dict[str, Path], name: str) -> None:
    model = load_checkpoint(Wav2Lip(), checkpoints[name])
    reference = torch.load(checkpoints["bare"], weights_only=True)
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("code", r"refused; nothing in it ran \(.*posix.system"),
        ("torchscript", "TorchScript archive"),
        ("truncated", "truncated or not a PyTorch checkpoint"),
        ("shapes", r"output_block.1.weight is 3x32x3x3, expected 3x32x1x1"),
        ("keys", r"7 missing \(first: audio_encoder.3.conv_block.0.weight.*7 unexpected \(first: x.audio_encoder.3"),
        ("empty", "holds no state dict"),
    ],
)
def test_what_is_not_a_checkpoint_is_refused_by_name(checkpoints: dict[str, Path], name: str, message: str) -> None:
    marker = Path("/tmp/lipsync-stream-ckpt-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(Wav2Lip(), checkpoints[name])
    assert not marker.exists()


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read the checkpoint .*nothing.pth"):
        load_checkpoint(Wav2Lip(), tmp_path / "nothing.pth")


def test_batched_output_equals_one_at_a_time_output() -> None:
    import numpy as np

    from lipsync_stream.neural.service import InferenceService
    from lipsync_stream.neural.wav2lip import Wav2LipRunner

    torch.manual_seed(0)
    runner = Wav2LipRunner(Wav2Lip())
    rng = np.random.default_rng(1)
    items = [(rng.uniform(-4, 4, (80, 16)).astype(np.float32), rng.uniform(0, 1, (6, 96, 96)).astype(np.float32)) for _ in range(6)]
    single = [runner([item])[0] for item in items]
    service = InferenceService(runner, max_batch=6, max_wait=0.2)
    try:
        session = service.open()
        batched = [f.result(timeout=60) for f in [service.submit(session, item) for item in items]]
    finally:
        service.stop()
    assert service.stats.batch_sizes[6] == 1  # one batch of six
    assert all(b.shape == (96, 96, 3) and b.dtype == np.uint8 for b in batched)
    assert max(int(np.abs(b.astype(int) - s.astype(int)).max()) for b, s in zip(batched, single, strict=True)) <= 1  # rounding only
