"""Algorithm 1 as a textbook loop: nn.Modules, torch.optim, loss.backward(), opt.step().

An independent reference for gansweep.engine: it shares only the per-sample loss terms
(gansweep.engine.losses.loss_terms, tested against closed forms in test_losses.py) and the networks' builders,
and writes everything else (alpha weights, penalty, optimiser, the order of the draws that
gansweep.engine.draws documents) again, the plain way. It also writes a checkpoint in the
layout gansweep wrote before the one iteration (format 1), to test that it still resumes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from gansweep.config.schema import TrialConfig
from gansweep.engine.data import Dataset
from gansweep.engine.losses import loss_terms
from gansweep.extend import REGULARISERS
from gansweep.engine.models import build_models


def _noise(trial: TrialConfig, n: int) -> Tensor:
    if trial.noise == "uniform":
        return torch.rand(n, trial.noise_dim) * 2.0 - 1.0
    return torch.randn(n, trial.noise_dim)


def _optimizer(trial: TrialConfig, module: nn.Module, lr: float) -> torch.optim.Optimizer:
    if trial.optimizer == "sgd":
        return torch.optim.SGD(module.parameters(), lr=lr, momentum=trial.momentum)
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(trial.adam_beta1, trial.adam_beta2))


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class ReferenceTrial:
    def __init__(self, trial: TrialConfig, data: Dataset) -> None:
        self.trial, self.data = trial, data
        torch.manual_seed(trial.seed)
        self.g, self.d = build_models(trial, data.shape)
        self.opt_g = _optimizer(trial, self.g, trial.effective_lr_g)
        self.opt_d = _optimizer(trial, self.d, trial.lr_d)
        self.loss = loss_terms(trial.loss)
        self.epoch = 0
        m = trial.batch_size
        self.n_real = round(trial.alpha * m) if trial.alpha_mode == "compose" else m
        self.n_fake = m - self.n_real if trial.alpha_mode == "compose" else m
        images = data.is_image and trial.generator_output == "tanh"
        self.train = data.train * 2 - 1 if images else data.train

    def weights(self, coins: Tensor | None) -> tuple[Tensor, Tensor]:
        t, m = self.trial, self.trial.batch_size
        if t.alpha_mode == "compose":
            return torch.full((self.n_real,), 1 / m), torch.full((self.n_fake,), 1 / m)
        if t.alpha_mode == "weight":
            return torch.full((m,), t.alpha / m), torch.full((m,), (1 - t.alpha) / m)
        is_real = (coins < t.alpha).float()
        return is_real / m, (1 - is_real) / m

    def d_step(self) -> list[float]:
        t = self.trial
        real = self.train[torch.randint(0, self.train.shape[0], (self.n_real,))]
        z = _noise(t, self.n_fake)
        coins = torch.rand(t.batch_size) if t.alpha_mode == "bernoulli" else None
        mix = None
        if self.loss.d_input_gradient is not None:  # the penalty, written out below
            mix = torch.rand((min(self.n_real, self.n_fake),) + (1,) * (real.dim() - 1))
        with torch.no_grad():
            fake = self.g(z)
        if _has_batch_norm(self.d):
            real_logits, fake_logits = self.d(real), self.d(fake)
        else:  # one forward, as Algorithm 1's minibatch of m examples
            logits = self.d(torch.cat((real, fake)))
            real_logits, fake_logits = logits[: self.n_real], logits[self.n_real :]
        w_real, w_fake = self.weights(coins)
        real_cost = self.loss.real_term(real_logits, t.label_smoothing)
        loss = (w_real * real_cost).sum() + (w_fake * self.loss.d_fake(fake_logits)).sum()
        total = loss
        if mix is not None:
            n = mix.shape[0]
            x_hat = (mix * real[:n] + (1 - mix) * fake[:n]).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.d(x_hat).sum(), x_hat, create_graph=True)
            total = loss + t.gp_weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        self.last_real = real
        total = total + self.regularisation("d", real, fake, real_logits, fake_logits)
        self.opt_d.zero_grad()
        total.backward()
        self.opt_d.step()
        return [
            loss.item(),
            self.loss.output(real_logits).mean().item(),
            self.loss.output(fake_logits).mean().item(),
        ]

    def g_step(self) -> float:
        fake = self.g(_noise(self.trial, self.trial.batch_size))
        logits = self.d(fake)
        loss = self.loss.g(logits).mean()
        self.opt_g.zero_grad()
        (loss + self.regularisation("g", self.last_real, fake, None, logits)).backward()
        self.opt_g.step()
        return loss.item()

    def regularisation(self, player: str, real: Tensor, fake: Tensor, real_logits: Tensor | None,
                       fake_logits: Tensor) -> Tensor | float:
        """The trial's regularisers of `player`, weighted: each plugin function given its
        inputs for one trial (P = 1) the plain way, D's input gradient by autograd.grad."""

        def d_grad(x: Tensor) -> Tensor:
            x0 = x[0] if x.requires_grad else x[0].detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.d(x0).sum(), x0, create_graph=True)
            return grad.unsqueeze(0)

        total: Tensor | float = 0.0
        for name, weight in self.trial.regularisers:
            entry = REGULARISERS.get(name)
            if weight == 0 or entry.meta["player"] != player:
                continue
            inputs = {"real": lambda: real.unsqueeze(0), "fake": lambda: fake.unsqueeze(0),
                      "real_logits": lambda: (self.d(real) if real_logits is None else real_logits).unsqueeze(0),
                      "fake_logits": lambda: fake_logits.unsqueeze(0),
                      "d": lambda: (lambda x: self.d(x[0]).unsqueeze(0)), "d_grad": lambda: d_grad}
            value = entry.code(**{n: inputs[n]() for n in entry.meta["inputs"]})
            total = total + weight * value.reshape(())
        return total

    def train_epoch(self) -> dict[str, float]:
        t = self.trial
        self.epoch += 1
        if t.optimizer == "sgd" and t.momentum_final is not None and t.epochs > 1:
            momentum = t.momentum + (self.epoch - 1) / (t.epochs - 1) * (t.momentum_final - t.momentum)
            for group in self.opt_d.param_groups + self.opt_g.param_groups:
                group["momentum"] = momentum
        steps = t.steps_per_epoch or self.train.shape[0] // t.batch_size
        sums = torch.zeros(4, dtype=torch.float64)  # d_loss, g_loss, d_real, d_fake
        for _ in range(steps):
            d_stats = torch.tensor([self.d_step() for _ in range(t.k)], dtype=torch.float64).mean(0)
            sums += torch.tensor([d_stats[0], self.g_step(), d_stats[1], d_stats[2]], dtype=torch.float64)
        means = (sums / steps).tolist()
        return dict(zip(("d_loss", "g_loss", "d_real", "d_fake"), means, strict=True))

    def format1_checkpoint(self) -> dict[str, Any]:
        """The lone-trial checkpoint layout of gansweep before the one iteration (copied:
        state_dict() holds the live tensors, which training goes on changing)."""
        return copy.deepcopy({
            "epoch": self.epoch, "wall_time": 0.0,
            "generator": self.g.state_dict(), "discriminator": self.d.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "rng_cpu": torch.get_rng_state(), "metrics": None,
        })


def reference_losses(trial: TrialConfig, data: Dataset, epochs: int | None = None) -> list[dict[str, float]]:
    ref = ReferenceTrial(trial, data)
    return [ref.train_epoch() for _ in range(epochs or trial.epochs)]
