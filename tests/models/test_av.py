"""AVModel: output shapes, encoders, which parameters get gradients, learning, autocast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avtime.models.audio import AudioEncoder, LogMel
from avtime.models.av import AVModel
from avtime.models.config import ModelConfig
from avtime.models.losses import enqueue, total_loss
from avtime.models.queue import FeatureQueue
from avtime.models.video import TinyVideoEncoder, VideoInput, build_video_encoder
from tests.models.helpers import NUM_SPEEDS, forward, loss_cfg, make_batch, tiny_model_cfg

B = 4


@pytest.mark.unit
def test_tiny_model_output_shapes() -> None:
    cfg = tiny_model_cfg()
    model = AVModel(cfg, NUM_SPEEDS)
    out = forward(model, make_batch(B, seed=0))
    fv, fa, d = model.video_dim, model.audio_dim, cfg.embed_dim
    assert (fv, fa) == (4 * cfg.tiny_width, 4 * cfg.tiny_width)
    expected = {
        "feat_video": (B, 2, fv), "feat_audio": (B, 2, fa), "emb_vv": (B, 2, d),
        "emb_va_video": (B, 2, d), "emb_va_audio": (B, 2, d),
        "logits_video_speed": (B, 2, NUM_SPEEDS), "logits_audio_speed": (B, 2, NUM_SPEEDS),
        "logits_video_reverse": (B, 2, 2), "logits_audio_reverse": (B, 2, 2),
        "logits_video_order": (B, 3), "logits_audio_order": (B, 3), "logits_av_order": (B, 2, 3),
    }  # fmt: skip
    assert {k: tuple(v.shape) for k, v in out.items()} == expected


@pytest.mark.unit
def test_pair_outputs_keep_clip_order() -> None:
    """Index 0 of [B, 2, ...] is clip 1: it equals encoding clip 1 alone (eval mode)."""
    model = AVModel(tiny_model_cfg(), NUM_SPEEDS).eval()
    batch = make_batch(B, seed=1)
    with torch.no_grad():
        out = forward(model, batch)
        torch.testing.assert_close(out["feat_video"][:, 1], model.encode_video(batch["video2"]))
        torch.testing.assert_close(out["feat_audio"][:, 0], model.encode_audio(batch["audio1"]))
        # The shared inter-modal head sees (v1, a2) first and (v2, a1) second.
        av = model.heads["av_order"](out["feat_video"][:, 1], out["feat_audio"][:, 0])
        torch.testing.assert_close(out["logits_av_order"][:, 1], av)


@pytest.mark.unit
def test_tiny_encoders_at_demo_size() -> None:
    cfg = ModelConfig(
        video_arch="tiny", audio_arch="tiny", tiny_width=32, frame_diff=True, n_mels=40
    )
    video = torch.randint(0, 256, (2, 3, 8, 64, 64), dtype=torch.uint8)
    assert build_video_encoder(cfg)(video).shape == (2, 128)
    assert AudioEncoder(cfg)(torch.randn(2, 10240).clamp(-1, 1)).shape == (2, 128)


@pytest.mark.unit
def test_full_encoders_forward_at_batch_1() -> None:
    cfg = ModelConfig()  # r2plus1d_18 + resnet18, 80 mel bins
    torch.manual_seed(0)
    with torch.inference_mode():
        video_net = build_video_encoder(cfg).eval()
        video = torch.randint(0, 256, (1, 3, 16, 112, 112), dtype=torch.uint8)
        feat = video_net(video)
        assert feat.shape == (1, 512) and torch.isfinite(feat).all()
        audio_net = AudioEncoder(cfg).eval()
        assert audio_net(torch.randn(1, 10240).clamp(-1, 1)).shape == (1, 512)
    model = AVModel(cfg, NUM_SPEEDS)
    assert (model.video_dim, model.audio_dim) == (512, 512)
    first = next(model.heads["av_order"].parameters())
    assert first.shape == (cfg.head_hidden, 1024)  # the inter head reads [video, audio] features


@pytest.mark.unit
def test_video_input_normalises_on_device_and_appends_frame_differences() -> None:
    video = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    plain, diff = VideoInput(False)(video), VideoInput(True)(video)
    assert plain.dtype == torch.float32 and plain.shape == (2, 3, 4, 8, 8)
    assert diff.shape == (2, 6, 4, 8, 8)
    torch.testing.assert_close(diff[:, :3], plain)
    torch.testing.assert_close(diff[:, 3:, :-1], plain[:, :, 1:] - plain[:, :, :-1])
    assert diff[:, 3:, -1].abs().sum() == 0
    torch.testing.assert_close(VideoInput(False)(video.float()), plain)
    assert TinyVideoEncoder(8, True).stem[0].in_channels == 6


@pytest.mark.unit
def test_video_input_without_rgb_shows_only_what_moves() -> None:
    still = torch.randint(0, 256, (1, 3, 1, 8, 8), dtype=torch.uint8).expand(2, 3, 5, 8, 8)
    video = still.clone()
    video[1, :, 2:, 3, 3] = 255 - video[1, :, 2:, 3, 3]  # one pixel changes at frame 2 of clip 1
    only = VideoInput(True, rgb=False)(video)
    both = VideoInput(True)(video)
    assert only.shape == (2, 3, 5, 8, 8)
    torch.testing.assert_close(only, both[:, 3:])
    assert only[0].abs().sum() == 0  # a still clip is all zeros, whatever its colours
    changed = only[1].abs().sum(0).nonzero().tolist()
    assert changed == [[1, 3, 3]]  # x[2] - x[1] at the changed pixel, nothing else
    assert TinyVideoEncoder(8, True, rgb=False).stem[0].in_channels == 3
    with pytest.raises(ValueError, match="frames"):
        VideoInput(False, rgb=False)
    with pytest.raises(ValueError, match="frame_diff"):
        ModelConfig(video_rgb=False)


@pytest.mark.unit
def test_motion_stream_is_blind_to_stills_and_alone_feeds_the_vv_term() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(video_arch="tiny", audio_arch="tiny", tiny_width=8, motion_stream=True)
    model = AVModel(cfg, NUM_SPEEDS).eval()
    enc = model.video
    assert enc.out_dim == 64 and model.vv_columns == slice(32, 64)
    assert model.heads["proj_vv"][0].in_features == 32
    stills = torch.randint(0, 256, (2, 3, 1, 32, 32), dtype=torch.uint8).expand(2, 3, 4, 32, 32)
    with torch.no_grad():
        f = model.encode_video(stills.contiguous())
    # Two different still clips: the appearance columns differ, the motion columns do not.
    assert (f[0, :32] - f[1, :32]).abs().max() > 1e-3
    torch.testing.assert_close(f[0, 32:], f[1, 32:])
    model.train()
    batch = make_batch(B, seed=3)
    out = forward(model, batch)
    out["emb_vv"].square().sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(not _has_grad(g) for n, g in grads.items() if n.startswith("video.appearance."))
    assert any(_has_grad(g) for n, g in grads.items() if n.startswith("video.motion."))

    # Every other head reads the motion columns without training them ...
    model.zero_grad()
    out = forward(model, batch)
    sum(v.square().sum() for k, v in out.items() if k.startswith(("logits_", "emb_va"))).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert not any(_has_grad(g) for n, g in grads.items() if n.startswith("video.motion."))
    assert any(_has_grad(g) for n, g in grads.items() if n.startswith("video.appearance."))
    # ... unless there is no vv term, which would leave the stream untrained.
    no_vv = AVModel(cfg, NUM_SPEEDS, loss_cfg=loss_cfg(w_vv=0.0)).train()
    forward(no_vv, batch)["logits_video_order"].square().sum().backward()
    assert any(
        _has_grad(p.grad) for n, p in no_vv.named_parameters() if n.startswith("video.motion.")
    )


@pytest.mark.unit
def test_motion_grad_scales_what_the_other_heads_send_to_the_motion_stream() -> None:
    batch = make_batch(B, seed=5)

    def grads(share: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        cfg = ModelConfig(
            video_arch="tiny", audio_arch="tiny", tiny_width=8, motion_stream=True,
            motion_grad=share,
        )  # fmt: skip
        model = AVModel(cfg, NUM_SPEEDS).train()
        out = forward(model, batch)
        sum(
            v.square().sum() for k, v in out.items() if k.startswith(("logits_", "emb_va"))
        ).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, quarter = grads(1.0), grads(0.25)
    motion = [n for n in full if n.startswith("video.motion.")]
    appearance = [n for n in full if n.startswith("video.appearance.")]
    assert motion and appearance
    for n in motion:  # the motion stream gets a quarter of the heads' gradient ...
        torch.testing.assert_close(quarter[n], 0.25 * full[n], rtol=1e-4, atol=1e-7)
    assert max(full[n].abs().max().item() for n in motion) > 1e-6
    for n in appearance:  # ... and the appearance stream all of it
        torch.testing.assert_close(quarter[n], full[n], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="motion_grad"):
        ModelConfig(motion_grad=1.5)


@pytest.mark.unit
def test_log_mel_front_end_shape_and_silence() -> None:
    front = LogMel(16000, 16, 25.0, 10.0)
    spec = front(torch.cat([torch.zeros(1, 2560), 0.3 * torch.randn(1, 2560)]))
    assert spec.shape == (2, 1, 16, 1 + 2560 // 160)
    assert torch.isfinite(spec).all() and spec[0].abs().sum() == 0
    assert spec[1].mean().abs() < 1e-4 and (spec[1].std() - 1).abs() < 1e-2


def _grads(model: torch.nn.Module, cfg_kw: dict[str, float]) -> dict[str, torch.Tensor | None]:
    cfg = loss_cfg(**cfg_kw)
    batch = make_batch(B, seed=2)
    loss, _ = total_loss(forward(model, batch), batch, cfg, FeatureQueue(cfg.queue_size, 16))
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _has_grad(g: torch.Tensor | None) -> bool:
    return g is not None and bool(g.abs().sum() > 0)


@pytest.mark.unit
def test_all_losses_reach_every_parameter() -> None:
    torch.manual_seed(0)
    grads = _grads(AVModel(tiny_model_cfg(), NUM_SPEEDS), {})
    missing = [n for n, g in grads.items() if not _has_grad(g)]
    assert not missing


@pytest.mark.unit
def test_zero_weights_leave_their_parameters_without_gradient() -> None:
    torch.manual_seed(0)
    model = AVModel(tiny_model_cfg(), NUM_SPEEDS)  # every head built
    off = {"w_va": 0.0, "w_speed": 0.0, "w_direction": 0.0, "w_order_intra": 0.0}
    grads = _grads(model, {**off, "w_order_inter": 0.0})  # video-video InfoNCE only
    for name, g in grads.items():
        on = name.startswith(("video.", "heads.proj_vv."))
        assert _has_grad(g) == on, name
    model.zero_grad(set_to_none=True)
    grads = _grads(model, {**off, "w_vv": 0.0})  # inter-modal order only
    for name, g in grads.items():
        on = name.startswith(("video.", "audio.", "heads.av_order."))
        assert _has_grad(g) == on, name


@pytest.mark.unit
def test_model_built_from_loss_config_has_only_enabled_parts() -> None:
    cfg = loss_cfg(w_va=0.0, w_speed=0.0, w_direction=0.0, w_order_intra=0.0, w_order_inter=0.0)
    model = AVModel(tiny_model_cfg(), NUM_SPEEDS, loss_cfg=cfg)
    assert model.audio is None and set(model.heads) == {"proj_vv"}
    with pytest.raises(RuntimeError, match="no audio encoder"):
        model.encode_audio(torch.zeros(1, 2560))
    grads = _grads(model, cfg.__dict__)
    assert all(_has_grad(g) for g in grads.values())  # no unused parameters (DDP-friendly)
    partial = AVModel(tiny_model_cfg(), NUM_SPEEDS, loss_cfg=loss_cfg(w_direction=0.0))
    assert "video_reverse" not in partial.heads and "av_order" in partial.heads
    assert "logits_video_reverse" not in forward(partial, make_batch(B, seed=3))


@pytest.mark.unit
def test_a_few_steps_lower_the_loss_on_a_toy_batch() -> None:
    torch.manual_seed(0)
    cfg = loss_cfg()
    model = AVModel(tiny_model_cfg(), NUM_SPEEDS, loss_cfg=cfg)
    queue = FeatureQueue(cfg.queue_size, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = make_batch(8, seed=4)
    losses = []
    for _ in range(12):
        out = forward(model, batch)
        loss, terms = total_loss(out, batch, cfg, queue)
        enqueue(queue, out, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(terms["loss"]))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def check_bf16_autocast_forward_with_float32_losses() -> None:
    """bf16 forward, fp32 losses, finite gradients (run in a fresh process by the test).

    With oneDNN, the CPU bf16 weight gradient of the tiny encoder's layer-4 (2+1)D conv held a
    few non-finite entries in about one fresh process in ten (57 of 8,208, loss identical), a
    kernel fault, not the model's: the native kernels run here instead. avtime trains in bf16
    only on CUDA; on CPU it runs fp32."""
    torch.manual_seed(0)
    model = AVModel(tiny_model_cfg(), NUM_SPEEDS)
    batch = make_batch(B, seed=5)
    with torch.backends.mkldnn.flags(enabled=False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(model, batch)
        assert out["emb_vv"].dtype == torch.bfloat16
        loss, terms = total_loss(out, batch, loss_cfg())
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.unit
def test_bf16_autocast_forward_with_float32_losses() -> None:
    """Runs the check in a fresh interpreter, away from the kernels and caches earlier tests in
    this process chose (see the check for the oneDNN fault it avoids)."""
    import subprocess
    import sys

    code = (
        "from tests.models.test_av import check_bf16_autocast_forward_with_float32_losses as c; c()"
    )
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
