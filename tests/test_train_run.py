"""Short CPU training runs on the images the tests ship: the loss goes down, checkpoints are
written, resume continues from the same step (bit-for-bit like an uninterrupted run), GAN
training with a discriminator and perceptual loss, fine-tuning from a zoo model, and the
result loads in `vsr image -m` without conversion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsr.train.checkpoint import latest_checkpoint, load_checkpoint
from vsr.train.config import load_config
from vsr.train.trainer import Trainer
from vsr.weights.zoo import load_model

from test_train_units import random_vgg_file

torch.set_num_threads(2)

TINY_SRRESNET = """
[model]
arch = "srresnet"
scale = 4
[model.hparams]
num_feat = 16
num_block = 2
norm = false
act = "lrelu"
block_act = "relu"
head_kernel = 3
tail_kernel = 3
body_conv = false
hr_conv = true
image_residual = true
"""


def write_config(tmp_path: Path, images_dir: Path, extra: str = "", **train: object) -> Path:
    settings = {"max_steps": 40, "lr_g": 2e-3, "lr_schedule": "constant", "precision": "fp32",
                "threads": 2, "log_every": 1, "checkpoint_every": 20, "val_every": 20,
                "ema_decay": 0.9, "out": str(tmp_path / "run")} | train
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    text = (TINY_SRRESNET + f'[data]\ntrain = "{images_dir}"\nval = "{images_dir}"\n'
            f"patch_size = 32\nbatch_size = 4\nval_max_size = 64\n{extra}\n[train]\n{lines}\n")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "train.toml"
    path.write_text(text)
    return path


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def fixed_batch_loss(trainer: Trainer, lr: torch.Tensor, hr: torch.Tensor) -> float:
    g = trainer.generator
    g.eval()
    with torch.no_grad():
        loss = torch.nn.functional.l1_loss(g(lr), hr).item()
    g.train()
    return loss


def test_training_reduces_loss_writes_checkpoints_and_resumes(tmp_path, images_dir):
    cfg = load_config(write_config(tmp_path, images_dir))
    trainer = Trainer(cfg, progress=False)
    lr, hr = trainer.sampler.sample(8, np.random.default_rng(1234))  # held-aside batch
    before = fixed_batch_loss(trainer, lr, hr)
    summary = trainer.run()
    after = fixed_batch_loss(trainer, lr, hr)
    assert summary["steps"] == 40 and summary["steps_this_run"] == 40
    assert after < 0.8 * before, (before, after)
    log = read_log(tmp_path / "run")
    losses = [r["loss_total"] for r in log if "loss_total" in r]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert any("val_psnr" in r for r in log) and any("val_bicubic_psnr" in r for r in log)
    assert summary["val_psnr"] > 15
    ck = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert ck is not None and ck.name == "step_00000040.safetensors"
    state = load_checkpoint(ck)
    assert state["step"] == 40 and state["opt_g"]["state"] and state["g_ema"]

    # resume: a new process-like Trainer continues at step 40 and runs to 50
    cfg50 = load_config(write_config(tmp_path, images_dir, max_steps=50))
    resumed = Trainer(cfg50, progress=False)
    assert resumed.resume() and resumed.step == 40
    for k, v in resumed.generator.state_dict().items():
        assert torch.equal(v, trainer.generator.state_dict()[k])
    s2 = resumed.run()
    assert s2["steps"] == 50 and s2["steps_this_run"] == 10
    steps = [r["step"] for r in read_log(tmp_path / "run") if "loss_total" in r]
    assert steps == list(range(1, 51))


def test_resume_matches_an_uninterrupted_run(tmp_path, images_dir):
    straight = load_config(write_config(tmp_path / "a", images_dir, max_steps=12, val_every=1000))
    a = Trainer(straight, progress=False)
    a.run()
    first = load_config(write_config(tmp_path / "b", images_dir, max_steps=7, val_every=1000))
    Trainer(first, progress=False).run()
    second = load_config(write_config(tmp_path / "b", images_dir, max_steps=12, val_every=1000))
    b = Trainer(second, progress=False)
    assert b.resume() and b.step == 7
    b.run()
    for (k, va), vb in zip(a.generator.state_dict().items(), b.generator.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    for va, vb in zip(a.ema.model.state_dict().values(), b.ema.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6)


@pytest.mark.parametrize("kind", ["vanilla", "relativistic"])
def test_gan_phase_after_pretraining(tmp_path, images_dir, kind):
    vgg = random_vgg_file(tmp_path / "vgg.safetensors", fmt="safetensors")
    extra = (f'[discriminator]\narch = "srgan"\n[discriminator.hparams]\nnum_feat = 8\ndense_feat = 16\n'
             f'[loss.perceptual]\nweight = 0.1\nvgg_weights = "{vgg}"\nlayers = {{ conv1_2 = 1.0 }}\n'
             f'[loss.adversarial]\ntype = "{kind}"\nweight = 1e-3\n')
    cfg = load_config(write_config(tmp_path, images_dir, extra, max_steps=6, pretrain_steps=3,
                                   checkpoint_every=6, val_every=1000))
    trainer = Trainer(cfg, progress=False)
    d0 = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    trainer.run()
    log = [r for r in read_log(tmp_path / "run") if "loss_total" in r]
    assert [r["phase"] for r in log] == ["psnr"] * 3 + ["gan"] * 3
    assert all("loss_adversarial" not in r and "d_loss" not in r for r in log[:3])
    assert all(r["loss_adversarial"] > 0 and r["loss_d_loss"] > 0 and r["loss_perceptual"] > 0
               for r in log[3:])
    assert all(0 <= r["loss_d_real"] <= 1 for r in log[3:])
    # the discriminator trained only in the GAN phase and is checkpointed with its optimiser
    assert any(not torch.equal(v, d0[k]) for k, v in trainer.discriminator.state_dict().items())
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["d"] and state["opt_d"]["state"]


def test_finetune_from_zoo_with_second_order_degradation(tmp_path, images_dir):
    extra = 'degradation = "second-order"\n'
    path = write_config(tmp_path, images_dir, extra, max_steps=2, val_every=1000, lr_g=1e-5)
    text = path.read_text().replace(TINY_SRRESNET, '[model]\ninit = "realesr-animevideov3-x4"\nscale = 4\n')
    path.write_text(text)
    cfg = load_config(path)
    trainer = Trainer(cfg, progress=False)
    start = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    summary = trainer.run()
    assert summary["arch"] == "srvggnet_compact" and summary["steps"] == 2
    zoo = load_model("realesr-animevideov3-x4").network.state_dict()
    assert all(torch.equal(start[k], zoo[k]) for k in zoo)  # started from the pretrained weights
    assert any(not torch.equal(v, start[k]) for k, v in trainer.generator.state_dict().items())
    exported = load_model(summary["generator"])
    assert exported.arch == "srvggnet_compact" and exported.model_scale == 4


def _vsr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_train_then_vsr_image_loads_the_generator(tmp_path, images_dir):
    cfg = write_config(tmp_path, images_dir, max_steps=3, val_every=1000)
    out = tmp_path / "cli-run"
    proc = _vsr("train", cfg, "--out", out, "--max-steps", 3, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    gen = Path(summary["generator"])
    assert gen == out / "generator.safetensors" and gen.is_file()
    assert summary["steps"] == 3 and (out / "config.json").is_file()
    # resume with a higher step limit continues from step 3
    proc = _vsr("train", cfg, "--out", out, "--max-steps", 5, "--resume", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps_this_run"] == 2
    # the EMA generator loads in the inference path by file name alone
    src = tmp_path / "in.png"
    Image.fromarray(np.asarray(Image.open(images_dir / "0014.jpg"))[:40, :48]).save(src)
    proc = _vsr("image", src, tmp_path / "out.png", "-m", gen, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "out.png").size == (192, 160)


def test_cli_refuses_bad_configs_with_one_line(tmp_path, images_dir, capsys):
    from vsr.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = write_config(tmp_path, images_dir)
    big = tmp_path / "big.toml"
    big.write_text(cfg.read_text().replace("patch_size = 32", "patch_size = 256"))
    cases = [
        ([cfg, "--data", empty], "data.train: no images or videos"),
        ([cfg, "--vgg", tmp_path / "none.pth"], "loss.perceptual.vgg_weights: file not found"),
        ([cfg, "--init", "no-such-model"], "unknown model 'no-such-model'"),
        ([big], "data.patch_size 256 is larger than"),
        ([tmp_path / "missing.toml"], "config file not found"),
    ]
    for args, message in cases:
        code = main(["train", *map(str, args)])
        err = capsys.readouterr().err
        assert code in (2, 5), err  # UsageError, or ModelError for the unknown zoo name
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()  # refused before training started


def test_fresh_run_into_a_used_folder_is_refused(tmp_path, images_dir):
    from vsr.errors import UsageError
    from vsr.train.trainer import train

    cfg = load_config(write_config(tmp_path, images_dir, max_steps=2, val_every=1000))
    assert train(cfg, progress=False)["steps"] == 2
    with pytest.raises(UsageError, match="already holds a run.*--resume"):
        train(cfg, progress=False)
    cfg.train.max_steps = 3
    assert train(cfg, resume=True, progress=False)["steps_this_run"] == 1


def test_paired_folders(tmp_path, images_dir):
    from vsr.train.data import load_image_rgb8

    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    for name in ("00003.png", "0014.jpg"):
        hr = load_image_rgb8(images_dir / name)
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        Image.fromarray(hr).save(hr_dir / f"{Path(name).stem}.png")
        # LR made differently from the trainer's bicubic: box filter, so pairing is visible
        lr = hr.reshape(hr.shape[0] // 4, 4, hr.shape[1] // 4, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        Image.fromarray(lr).save(lr_dir / f"{Path(name).stem}.png")
    path = write_config(tmp_path, hr_dir, f'degradation = "paired"\nlr = "{lr_dir}"\n', max_steps=2)
    trainer = Trainer(load_config(path), progress=False)
    lr, hr = trainer.sampler.sample(4, np.random.default_rng(0))
    box = torch.nn.functional.avg_pool2d(hr, 4)
    assert (lr - box).abs().max() < 1 / 255 + 1e-6  # crops aligned with their HR patch
    (lr_dir / "0014.png").unlink()
    with pytest.raises(Exception, match="data.lr: no low-resolution image named 0014.png"):
        Trainer(load_config(path), progress=False)
