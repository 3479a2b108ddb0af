"""Diffusion over a timestep grid: noising, the masked loss, DDIM/DDPM samplers, guidance (chapters 7-8).

Everything here takes *any* model with the AVDiT signature
``model(video_latent [B, Cv, 5, h, w], audio_latent [B, Ca, 34], timestep_grid [B, M, N])
-> (video_output, audio_output)``, and a timestep *grid*: each cell (modality, time segment)
has its own noise level, and each latent frame takes the level of its cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import Geometry
from .latents import VIDEO, audio_segment_of_latent_frame, expand_grid, video_segment_of_latent_frame
from .perceptual import perceptual_error
from .schedules import NoiseSchedule

PREDICTIONS = ("epsilon", "v")
SAMPLERS = ("ddim", "ddpm")
X0_LIMIT = 6.0  # latents have unit variance: a clean-latent estimate beyond +-6 is an early step's blow-up


def _clamped(guess: Latents) -> Latents:
    """A clean-latent guess clamped to +-X0_LIMIT, as the sampler clamps its estimates (self-conditioning hands it on)."""
    return Latents(guess.video.clamp(-X0_LIMIT, X0_LIMIT), guess.audio.clamp(-X0_LIMIT, X0_LIMIT))


def reads_its_estimate(model) -> bool:
    """Whether ``model`` is self-conditioned (``AVDiTConfig.self_condition``), through DDP and torch.compile."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    return bool(getattr(getattr(inner, "config", None), "self_condition", False))


@dataclass
class Latents:
    """A pair of latents that travel together: video [B, Cv, 5, h, w] and audio [B, Ca, 34]."""

    video: Tensor
    audio: Tensor

    def pairs(self, other: "Latents") -> list[tuple[Tensor, Tensor]]:
        return [(self.video, other.video), (self.audio, other.audio)]


def _frame_mask(frames: Tensor, x: Tensor) -> Tensor:
    """A per-frame boolean [B, F] shaped to broadcast against latent x [B, C, F, ...]."""
    return frames.reshape(x.shape[0], 1, x.shape[2], *([1] * (x.dim() - 3)))


def _weights_off_the_median(x: Tensor, dims: tuple[int, ...], boost: float, threshold: float) -> Tensor:
    """1 + ``boost`` where ``x`` is more than ``threshold`` (over its channels) from its median over ``dims``,
    normalised to mean 1 over ``dims``: the shared rule of the two weightings below."""
    median = x.flatten(dims[0]).median(dim=dims[0]).values.reshape(*x.shape[:dims[0]], *[1] * len(dims))
    far = ((x.float() - median.float()) ** 2).sum(dim=1, keepdim=True).sqrt() > threshold
    weights = 1.0 + boost * far.float()
    return weights / weights.mean(dim=dims, keepdim=True)


def latent_object_weights(video: Tensor, boost: float, threshold: float = 1.0) -> Tensor:
    """Loss weights [B, 1, F, h, w] for a video latent: 1 + ``boost`` where the object is, mean 1 per frame.

    The background is flat, so most positions of a latent frame hold nearly the same vector; the
    object is where the latent differs from the frame's (per-channel) median by more than
    ``threshold`` (in the scaled, unit-variance latents: about 13 of the 64 positions of a latent
    frame, which covers 4 video frames of motion). Normalised to mean 1 in every frame, the weights
    move the loss towards the object without changing its scale (chapter 7).
    """
    return _weights_off_the_median(video, (3, 4), boost, threshold)


def latent_impact_weights(audio: Tensor, boost: float, threshold: float = 3.0) -> Tensor:
    """Loss weights [B, 1, T] for an audio latent: 1 + ``boost`` on the impacts, mean 1 per clip.

    The drone is steady, so an impact is where the latent differs from the clip's median vector
    over time by more than ``threshold`` (unit-variance latents: about 8 of the 34 frames, the
    impacts and the loudest of their ringing) -- the frames that carry the timbre and the pitch.
    """
    return _weights_off_the_median(audio, (2,), boost, threshold)


class GridDiffusion:
    """The forward process, the loss and the samplers, all indexed by a timestep grid (chapter 7)."""

    def __init__(self, schedule: NoiseSchedule | None = None, geometry: Geometry | None = None,
                 prediction: str = "epsilon"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
        self.schedule = schedule or NoiseSchedule("cosine", 1000)
        self.geometry = geometry or Geometry()
        self.prediction = prediction
        self.T = self.schedule.T

    # -- the forward process -------------------------------------------------------------------
    def frame_steps(self, timestep_grid: Tensor) -> tuple[Tensor, Tensor]:
        """Per-latent-frame steps: (t_video [B, 5], t_audio [B, 34]) from the grid [B, M, N]."""
        return expand_grid(timestep_grid, self.geometry)

    def q_sample(self, clean: Latents, timestep_grid: Tensor, noise: Latents) -> Latents:
        """Noise every latent frame to the level of its cell (t = 0 leaves it clean)."""
        t_video, t_audio = self.frame_steps(timestep_grid)
        return Latents(
            self.schedule.q_sample(clean.video, t_video, noise.video, time_dim=2),
            self.schedule.q_sample(clean.audio, t_audio, noise.audio, time_dim=2),
        )

    def _coef(self, t_frames: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha_bar = self.schedule.alpha_bar.to(x.device)[t_frames]  # [B, F]
        shape = [x.shape[0], 1, x.shape[2]] + [1] * (x.dim() - 3)
        alpha_bar = alpha_bar.reshape(shape).to(x.dtype)
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def target(self, clean: Tensor, noise: Tensor, t_frames: Tensor) -> Tensor:
        """What the network learns to output: epsilon, or v = sqrt(ab) eps - sqrt(1 - ab) x0."""
        if self.prediction == "epsilon":
            return noise
        signal, sigma = self._coef(t_frames, clean)
        return signal * noise - sigma * clean

    def to_eps_x0(self, output: Tensor, x_t: Tensor, t_frames: Tensor) -> tuple[Tensor, Tensor]:
        """The network's output as (epsilon, x0) estimates."""
        signal, sigma = self._coef(t_frames, x_t)
        if self.prediction == "epsilon":
            eps = output
            x0 = (x_t - sigma * eps) / signal
        else:
            x0 = signal * x_t - sigma * output
            eps = sigma * x_t + signal * output
        return eps, x0

    # -- the loss ------------------------------------------------------------------------------
    def loss(self, model, clean: Latents, timestep_grid: Tensor, generator: torch.Generator | None = None,
             object_boost: float = 0.0, impact_boost: float = 0.0, reader=None,
             perceptual_weight: float = 0.0, self_condition: bool | None = None, twins: int = 0,
             counterfactual: float = 0.0, counterfactual_gamma: float = 1.0, counterfactual_hide: int = 0,
             extras: dict | None = None) -> tuple[Tensor, Tensor]:
        """The MoNL loss: MSE on epsilon (or v) over the latent frames whose cell has t > 0.

        Each modality's error is averaged over its own noised elements and the two are added,
        so the 10x larger video latent does not drown the audio. Returns (loss, per-cell loss
        [B, M, N], NaN on t = 0 cells) -- the second is what chapter 7 plots per strategy and t.
        ``object_boost`` > 0 weighs the video latent's object positions more
        (:func:`latent_object_weights`), ``impact_boost`` > 0 the audio latent's impacts
        (:func:`latent_impact_weights`); 0, the default, is the plain mean. ``reader`` (a frozen
        :class:`~avdit_mini.perceptual.LatentReader`) with ``perceptual_weight`` > 0 adds the weighted
        squared difference of its features of the estimated and the true clean video latent
        (:func:`~avdit_mini.perceptual.perceptual_error`), over the noised latent frames.

        ``self_condition`` (Chen et al. 2023, "Analog Bits"; chapter 7; None: whether the model reads one,
        :func:`reads_its_estimate`): the model is first asked without
        an estimate (no gradient); for a random half of the batch its answer, as an estimate of the clean
        latents, is given back as ``previous`` to the call that is trained -- so the model learns both to
        start from nothing and to improve on its own last guess, which is what the sampler gives it.

        ``twins`` = K > 0 (chapter 8, "Holding the guesses to a counterfactual"): the batch's last K
        examples are the first K's counterfactual twins (``data.CounterfactualDataset``: the same clip
        with another shape), with the same grid; they get the same noise, and ``counterfactual`` > 0
        adds that weight times :meth:`counterfactual_error` of each pair's guesses (its ``gamma``:
        ``counterfactual_gamma``). ``counterfactual_hide`` = H > 0: in every latent frame at step H or
        above, the twin is given its original's noisy input, so that the two inputs differ only in the
        frames below H -- a task's condition -- and the guesses' difference in the others can only come
        from there (H = 400: the square-circle difference is hidden by the noise from step 369, chapter 7).
        The twin's own squared error is kept in those frames: from that input and its condition, its
        clean latent is the twin's -- the same counterfactual claim, which the noise there hardly refutes.
        ``extras``, a dict, receives the unweighted term as ``"counterfactual"``.
        """
        batch = clean.video.shape[0]
        if twins and counterfactual and counterfactual_gamma == 0 and self.prediction == "epsilon":
            raise ValueError("counterfactual_gamma 0 weighs every noised frame's clean-latent error fully, and an epsilon "
                             "model's grows as 1 / SNR (about 1e5 near t = T): use gamma > 0, or v prediction")
        if twins and not (0 < 2 * twins <= batch and torch.equal(timestep_grid[:twins], timestep_grid[batch - twins:])):
            raise ValueError(f"twins={twins}: the last {twins} of the batch's {batch} examples must be the first {twins}'s "
                             "twins, with the same timestep grids")
        noise = Latents(torch.randn(clean.video.shape, generator=generator, device=clean.video.device),
                        torch.randn(clean.audio.shape, generator=generator, device=clean.audio.device))
        if twins:  # a twin is noised exactly as its original: only the shape differs between their inputs
            noise = Latents(*(torch.cat([n[:batch - twins], n[:twins]]) for n in (noise.video, noise.audio)))
        noisy = self.q_sample(clean, timestep_grid, noise)
        t_video, t_audio = self.frame_steps(timestep_grid)
        if twins and counterfactual_hide:  # where the noise hides the shape, the twin sees its original's input
            noisy = Latents(*(self._hidden_from_twins(x, t, twins, counterfactual_hide)
                              for x, t in ((noisy.video, t_video), (noisy.audio, t_audio))))
        if self_condition is None:
            self_condition = reads_its_estimate(model)
        if self_condition:
            estimate = self.own_estimate(model, noisy, timestep_grid, generator, twins)
            output = model(noisy.video, noisy.audio, timestep_grid, estimate)
        else:
            output = model(noisy.video, noisy.audio, timestep_grid)
        total = clean.video.new_zeros(())
        per_cell = torch.full(timestep_grid.shape, float("nan"), device=clean.video.device)
        for row, (out, x0, eps, t_frames) in enumerate(
            [(output[0], clean.video, noise.video, t_video), (output[1], clean.audio, noise.audio, t_audio)]
        ):
            error = (out.float() - self.target(x0, eps, t_frames).float()) ** 2
            if row == VIDEO and object_boost:
                error = error * latent_object_weights(x0, object_boost)
            if row != VIDEO and impact_boost:
                error = error * latent_impact_weights(x0, impact_boost)
            frame_error = error.mean(dim=[d for d in range(error.dim()) if d not in (0, 2)])  # [B, F]
            noised = (t_frames > 0).float()  # [B, F]
            if row == VIDEO and reader is not None and perceptual_weight:
                _, estimate = self.to_eps_x0(out.float(), noisy.video, t_frames)
                alpha_bar = self.schedule.alpha_bar.to(x0.device)[t_frames]  # [B, F]
                seen = perceptual_error(reader, estimate, x0.float(), alpha_bar)  # [B, F]
                total = total + perceptual_weight * (seen * noised).sum() / noised.sum().clamp_min(1.0)
            total = total + (frame_error * noised).sum() / noised.sum().clamp_min(1.0)
            if twins:
                _, estimate = self.to_eps_x0(out.float(), (noisy.video, noisy.audio)[row], t_frames)
                term = self.counterfactual_error(estimate, x0.float(), t_frames, twins, gamma=counterfactual_gamma)
                if extras is not None:
                    extras["counterfactual"] = extras.get("counterfactual", 0.0) + term.detach()
                total = total + counterfactual * term
            segment = (self.frame_segments(row)).to(frame_error.device)  # [F]
            for n in range(timestep_grid.shape[2]):
                in_cell = segment == n
                cell = frame_error[:, in_cell].mean(dim=1)  # [B]
                per_cell[:, row, n] = torch.where(timestep_grid[:, row, n] > 0, cell.detach(), per_cell[:, row, n])
        return total, per_cell

    @staticmethod
    def _hidden_from_twins(x: Tensor, t_frames: Tensor, twins: int, hide: int) -> Tensor:
        """``x`` with each twin's latent frames at step ``hide`` or above replaced by its original's."""
        batch = x.shape[0]
        hidden = (t_frames[batch - twins:] >= hide).reshape(twins, 1, t_frames.shape[1], *[1] * (x.dim() - 3))
        return torch.cat([x[:batch - twins], torch.where(hidden, x[:twins], x[batch - twins:])])

    def counterfactual_error(self, estimate: Tensor, clean: Tensor, t_frames: Tensor, twins: int,
                             floor: float = 0.01, gamma: float = 1.0) -> Tensor:
        """How far a pair's guesses are from differing as the pair does, relative to how much it does.

        With ``estimate`` the network's guesses of the clean latents of a batch whose last ``twins``
        examples are the first ones' counterfactual twins (same grid, same noise), per pair:

            sum w (d - D)^2 / sum D^2,    d = guess - twin's guess,  D = clean - twin's clean,

        over the noised latent frames, with w = min(1, SNR(t) / ``gamma``): the clean-latent error where the
        signal is at least ``gamma`` times as loud as the noise, less where it is not. ``gamma`` = 0: w = 1
        at every noised frame, so the noisiest frames -- where the pair's inputs differ by a mere
        sqrt(alpha_bar) D and the difference must come from the other cells, a task's condition, or be
        enlarged from that trace -- count as much as the rest. Squared-error training alone lets a quiet
        difference (a circle turned square) go: its share of the plain loss is tiny. Here every pair counts
        the same, however quiet its difference; the pair's sum of D^2 is floored at ``floor`` times its
        number of noised elements, so a change the noised frames do not hold (an impact-free stretch of
        sound) is not blown up. Mean over the pairs, those without a noised frame counting 0; a pair whose
        inputs are the same (every frame hidden, ``counterfactual_hide``) has d = 0 and counts
        sum w D^2 / sum D^2 (1 with ``gamma`` 0) whatever the network: a floor of the logged term.
        """
        batch = estimate.shape[0]
        first, second = slice(0, twins), slice(batch - twins, batch)
        d = estimate[first] - estimate[second]
        D = clean[first] - clean[second]
        alpha_bar = self.schedule.alpha_bar.to(clean.device)[t_frames[first]]  # [K, F]
        snr = alpha_bar / (1 - alpha_bar).clamp_min(1e-8)
        weight = (snr / gamma).clamp(max=1.0) if gamma > 0 else torch.ones_like(snr)
        shape = [twins, 1, weight.shape[1]] + [1] * (clean.dim() - 3)
        noised = (t_frames[first] > 0).float().reshape(shape)  # only noised frames count
        per_element = noised.expand_as(D).flatten(1).sum(1)  # [K]
        error = (noised * weight.reshape(shape) * (d - D) ** 2).flatten(1).sum(1)
        energy = (noised * D ** 2).flatten(1).sum(1)
        return (error / torch.maximum(energy, floor * per_element).clamp_min(1e-8)).mean()

    @torch.no_grad()
    def own_estimate(self, model, noisy: Latents, timestep_grid: Tensor,
                     generator: torch.Generator | None = None, twins: int = 0) -> tuple[Tensor, Tensor]:
        """Self-conditioning's first call: the model's estimate of the clean latents, kept for a random
        half of the batch (zeros, "no estimate", for the other half); clamped as the sampler clamps it.
        With ``twins`` (see :meth:`loss`) a twin keeps its estimate exactly when its original does."""
        estimate = _clamped(self.predict(model, noisy, timestep_grid)[1])
        keep = torch.rand(noisy.video.shape[0], generator=generator, device=noisy.video.device) < 0.5  # [B]
        if twins:
            keep = torch.cat([keep[:keep.shape[0] - twins], keep[:twins]])
        return tuple(torch.where(keep.reshape(-1, *[1] * (e.dim() - 1)), e, 0.0).to(x.dtype)
                     for e, x in ((estimate.video, noisy.video), (estimate.audio, noisy.audio)))

    def frame_segments(self, row: int) -> Tensor:
        """The segment of each latent frame of modality ``row``."""
        return (video_segment_of_latent_frame if row == VIDEO else audio_segment_of_latent_frame)(self.geometry)

    # -- sampling ------------------------------------------------------------------------------
    def step_sequence(self, steps: int) -> list[int]:
        """The decreasing steps T = tau_0 > ... > tau_S = 0 that a sampler visits."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be in 1..{self.T}, got {steps}")
        return torch.linspace(self.T, 0, steps + 1).round().long().tolist()

    def predict(self, model, x: Latents, timestep_grid: Tensor,
                previous: Latents | None = None) -> tuple[Latents, Latents]:
        """One network call: its (epsilon, x0) estimates for noisy latents ``x`` at ``timestep_grid``.

        What every sampler step asks; chapter 8 asks it once, to see what the network knows at a noise level.
        ``previous``: a self-conditioned model's last estimate of the clean latents (None: none yet).
        """
        if previous is None:
            out_v, out_a = model(x.video, x.audio, timestep_grid)
        else:
            out_v, out_a = model(x.video, x.audio, timestep_grid, (previous.video, previous.audio))
        t_video, t_audio = self.frame_steps(timestep_grid)
        eps_v, x0_v = self.to_eps_x0(out_v.float(), x.video, t_video)
        eps_a, x0_a = self.to_eps_x0(out_a.float(), x.audio, t_audio)
        return Latents(eps_v, eps_a), Latents(x0_v, x0_a)

    @torch.no_grad()
    def one_step_guess(self, model, clean: Latents, condition_mask: Tensor, t: int,
                       noise: Latents) -> tuple[Latents, Latents]:
        """Noise the target cells of ``clean`` to step ``t`` (condition cells stay clean) and ask once (chapter 8).

        ``condition_mask`` [M, N] is a task's pattern (True = condition). Returns the noisy input and
        the network's guess of the clean latents, x0_hat: what the model knows at that noise level.
        """
        grid = torch.where(condition_mask.bool().to(clean.video.device), 0, t).long().expand(clean.video.shape[0], -1, -1)
        noisy = self.q_sample(clean, grid, noise)
        return noisy, self.predict(model, noisy, grid)[1]

    @torch.no_grad()
    def sample(
        self,
        model,
        condition_mask: Tensor,
        condition: Latents | None = None,
        batch_size: int | None = None,
        steps: int = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        guidance: float = 1.0,
        guidance_drop: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        clip_x0: float | None = X0_LIMIT,
        latent_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
        guide_model=None,
        start_step: int | None = None,
    ) -> Latents:
        """Generate the target cells of ``condition_mask`` [M, N] (True = condition) (chapter 8).

        Condition cells hold their clean latent at t = 0 at every step and come out bit-identical.
        Target cells go from T to 0 with DDIM (``eta`` = 0 is deterministic) or DDPM (ancestral,
        ``eta`` = 1). With ``guidance`` w != 1 the prediction is eps_u + w (eps_c - eps_u), where
        the unconditional branch puts the ``guidance_drop`` cells (default: every condition cell)
        at t = T with fresh noise -- MoNL needs no extra training for this. ``clip_x0`` clamps
        the x0 estimate (latents have unit variance) so that the first steps, where alpha_bar is
        1e-5, cannot blow up.

        ``guide_model`` (autoguidance, Karras et al. 2024): with ``guidance`` w != 1, the second
        branch is not the unconditional one but a weaker network (less trained, or smaller) asked
        the same question, conditions and all: eps_weak + w (eps - eps_weak). It pushes each step
        away from the errors the weaker network makes more of -- such as hedging between shapes.

        A self-conditioned model (``AVDiTConfig.self_condition``, chapter 7) is given, at every step, its
        own guess of the clean latents from the step before (none at the first step; the condition frames
        hold their clean latents, as in training). With MoNL guidance the unconditional branch keeps a
        chain of guesses of its own, and so does a self-conditioned autoguide model.

        ``start_step`` (SDEdit, Meng et al. 2022; chapter 8): the target cells do not start as pure
        noise at T but as ``condition``'s own latents there noised to this step, and the sampler runs
        from it down the same step grid. How much noise the model finds its way back from.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        if guide_model is not None and guidance_drop is not None:
            raise ValueError("guidance_drop chooses what MoNL's unconditional branch drops; with guide_model the second "
                             "branch is the weaker model, which sees every condition -- pass one or the other")
        eta = 1.0 if sampler == "ddpm" else eta
        mask = condition_mask.bool()
        if start_step is not None and condition is None:
            raise ValueError("start_step (SDEdit) starts the target cells from the clip's own latents: pass them as condition")
        if condition is None:
            if mask.any():
                raise ValueError("the pattern has condition cells but no condition latents were given")
            if batch_size is None or latent_shapes is None:
                raise ValueError("pass batch_size and latent_shapes when nothing is conditioned")
            device = next(iter(model.parameters())).device if hasattr(model, "parameters") else "cpu"
            condition = Latents(torch.zeros(batch_size, *latent_shapes[0], device=device),
                                torch.zeros(batch_size, *latent_shapes[1], device=device))
        batch, device = condition.video.shape[0], condition.video.device
        drop = mask if guidance_drop is None else (guidance_drop.bool() & mask)
        target_grid = (~mask).long()[None].expand(batch, -1, -1)  # [B, M, N]: 1 on targets, 0 on conditions
        is_target = Latents(*self.frame_steps(target_grid)).pairs(condition)
        is_target = Latents(*[_frame_mask(t > 0, x) for t, x in is_target])  # broadcastable [B, 1, F, ...]

        def randn(shape):
            return torch.randn(shape, generator=generator, device=device)

        # targets start as pure noise (t = T), conditions as their clean latents (t = 0)
        x = Latents(*[torch.where(target, randn(c.shape), c) for target, c in is_target.pairs(condition)])
        sequence = self.step_sequence(steps)
        if start_step is not None:  # SDEdit: the targets' own latents, noised to start_step (x holds the noise)
            if not isinstance(start_step, int) or not 0 < start_step <= self.T:
                raise ValueError(f"start_step must be an integer step in 1..{self.T}, got {start_step!r}")
            noised = self.q_sample(condition, target_grid * start_step, x)
            x = Latents(*[torch.where(target, n, c) for (target, c), n in zip(is_target.pairs(condition),
                                                                              (noised.video, noised.audio))])
            sequence = [start_step] + [t for t in sequence if t < start_step]
        # self-conditioning's last guesses: the model's (conditional) chain, MoNL guidance's unconditional branch's,
        # and a self-conditioned autoguide's -- each branch reads only its own answers, as in its training
        self_conditioned, previous, previous_u = reads_its_estimate(model), None, None
        guide_reads, previous_g = guide_model is not None and reads_its_estimate(guide_model), None
        iterator = range(len(sequence) - 1)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"{sampler} {steps} steps", leave=False)
        for i in iterator:
            t_now, t_next = sequence[i], sequence[i + 1]
            grid = target_grid * t_now  # targets at t_now, conditions at 0: [B, M, N]
            eps, x0 = self.predict(model, x, grid, previous)
            guess = x0  # the conditional branch's own guess, before guidance
            if guidance != 1.0 and guide_model is not None:
                eps, x0, guess_g = self._autoguide(guide_model, x, grid, eps, guidance, t_now, previous_g)
                previous_g = self._hand_on(guess_g, is_target, condition) if guide_reads else None
            elif guidance != 1.0 and drop.any():
                eps, x0, guess_u = self._guide(model, x, grid, eps, condition, drop, is_target, guidance, t_now,
                                               randn, previous_u)
                previous_u = _clamped(guess_u) if self_conditioned else None  # its dropped conditions stay guesses
            if self_conditioned:
                previous = self._hand_on(guess, is_target, condition)
            if clip_x0 is not None:
                eps, x0 = self._clip(x, x0, t_now, clip_x0)
            x = Latents(*[self._update(xt, x0_, e, t_now, t_next, eta, target, randn)
                          for xt, x0_, e, target in zip((x.video, x.audio), (x0.video, x0.audio),
                                                        (eps.video, eps.audio), (is_target.video, is_target.audio))])
        return x

    def _guide(self, model, x: Latents, grid: Tensor, eps: Latents, condition: Latents, drop: Tensor,
               is_target: Latents, guidance: float, t_now: int, randn,
               previous_u: Latents | None = None) -> tuple[Latents, Latents, Latents]:
        """Guidance with MoNL: the unconditional branch puts the dropped condition cells at t = T.

        Returns the guided (epsilon, x0) and the unconditional branch's own guess of the clean latents:
        a self-conditioned model's unconditional branch is handed its own last guess (``previous_u``),
        never the conditional branch's, which holds the condition."""
        grid_u = torch.where(drop[None], torch.full_like(grid, self.T), grid)  # [B, M, N]
        inputs = []
        for t_frames, xt, c, target in zip(self.frame_steps(grid_u), (x.video, x.audio),
                                           (condition.video, condition.audio), (is_target.video, is_target.audio)):
            dropped = _frame_mask(t_frames == self.T, xt) & ~target
            inputs.append(torch.where(dropped, self.schedule.q_sample(c, t_frames, randn(c.shape), time_dim=2), xt))
        eps_u, x0_u = self.predict(model, Latents(*inputs), grid_u, previous_u)
        return *self._extrapolate(x, eps_u, eps, guidance, t_now), x0_u

    def _autoguide(self, guide_model, x: Latents, grid: Tensor, eps: Latents, guidance: float,
                   t_now: int, previous_g: Latents | None = None) -> tuple[Latents, Latents, Latents]:
        """Autoguidance: the same inputs to the weaker network; extrapolate from its answer to the model's.
        Also returns the guide's own guess: a self-conditioned guide is handed its own chain (``previous_g``)."""
        eps_weak, x0_weak = self.predict(guide_model, x, grid, previous_g)
        return *self._extrapolate(x, eps_weak, eps, guidance, t_now), x0_weak

    @staticmethod
    def _hand_on(guess: Latents, is_target: Latents, condition: Latents) -> Latents:
        """A conditional chain's guess for the next step: clamped, the condition frames at their clean latents."""
        guess = _clamped(guess)
        return Latents(*[torch.where(target, g, c) for target, g, c in
                         zip((is_target.video, is_target.audio), (guess.video, guess.audio), (condition.video, condition.audio))])

    def _extrapolate(self, x: Latents, eps_from: Latents, eps: Latents, guidance: float,
                     t_now: int) -> tuple[Latents, Latents]:
        """eps_from + w (eps - eps_from), and the x0 estimate that agrees with it (both kinds of guidance)."""
        guided = Latents(eps_from.video + guidance * (eps.video - eps_from.video),
                         eps_from.audio + guidance * (eps.audio - eps_from.audio))
        ab = self.schedule.alpha_bar[t_now]
        x0 = Latents(*[(xt - (1 - ab).sqrt() * e) / ab.sqrt() for xt, e in x.pairs(guided)])
        return guided, x0

    def _clip(self, x: Latents, x0: Latents, t_now: int, limit: float) -> tuple[Latents, Latents]:
        """Clamp the x0 estimate and recompute the epsilon that agrees with it."""
        ab = self.schedule.alpha_bar[t_now]
        x0 = Latents(x0.video.clamp(-limit, limit), x0.audio.clamp(-limit, limit))
        eps = Latents(*[(xt - ab.sqrt() * x0_) / (1 - ab).sqrt() for xt, x0_ in x.pairs(x0)])
        return eps, x0

    def _update(self, x_t: Tensor, x0: Tensor, eps: Tensor, t_now: int, t_next: int, eta: float, is_target: Tensor,
                randn) -> Tensor:
        """One DDIM step (Song et al. eq. 12) on the target frames; condition frames are kept."""
        alpha_bar = self.schedule.alpha_bar
        ab_now, ab_next = float(alpha_bar[t_now]), float(alpha_bar[t_next])
        sigma = eta * ((1 - ab_next) / (1 - ab_now) * (1 - ab_now / ab_next)) ** 0.5 if t_next > 0 else 0.0
        direction = max(1 - ab_next - sigma**2, 0.0) ** 0.5
        x_next = ab_next**0.5 * x0 + direction * eps
        if sigma > 0:
            x_next = x_next + sigma * randn(x_t.shape)
        return torch.where(is_target, x_next, x_t)
