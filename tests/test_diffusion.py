from dataclasses import replace

import pytest
import torch

from avdit_mini.avdit import AVDiT, AVDiTConfig
from avdit_mini.diffusion import GridDiffusion, Latents
from avdit_mini.monl import sample_timestep_grid
from avdit_mini.tasks import TASKS


def random_model(seed: int = 0, **config) -> AVDiT:
    torch.manual_seed(seed)
    model = AVDiT(AVDiTConfig.preset("tiny", **config))
    with torch.no_grad():  # leave adaLN-Zero's zero init so the model does something
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model.eval()


def clean_latents(batch: int = 2) -> Latents:
    g = torch.Generator().manual_seed(1)
    return Latents(torch.randn(batch, 8, 5, 8, 8, generator=g), torch.randn(batch, 8, 34, generator=g))


def test_q_sample_uses_each_frames_cell():
    diffusion = GridDiffusion()
    clean = clean_latents()
    grid = torch.zeros(2, 2, 5, dtype=torch.long)
    grid[:, 0, 2] = 1000  # video segment 2 fully noised, everything else clean
    noise = Latents(torch.randn_like(clean.video), torch.randn_like(clean.audio))
    noisy = diffusion.q_sample(clean, grid, noise)
    assert torch.equal(noisy.audio, clean.audio)
    assert torch.equal(noisy.video[:, :, [0, 1, 3, 4]], clean.video[:, :, [0, 1, 3, 4]])
    assert not torch.allclose(noisy.video[:, :, 2], clean.video[:, :, 2])


def test_loss_ignores_clean_cells():
    diffusion = GridDiffusion()
    model = random_model()
    clean = clean_latents()
    grid = sample_timestep_grid(2, "per_time_modality", generator=torch.Generator().manual_seed(0))
    grid[:, 1] = 0  # audio clean: no audio term
    loss, per_cell = diffusion.loss(model, clean, grid, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and per_cell[:, 1].isnan().all() and not per_cell[:, 0].isnan().any()
    # changing the clean audio's *target* cannot change the loss: only its role as input does
    loss.backward()


def test_loss_is_zero_for_an_oracle():
    diffusion = GridDiffusion()
    clean = clean_latents()
    grid = sample_timestep_grid(2, "monl", generator=torch.Generator().manual_seed(3))

    class Oracle(torch.nn.Module):
        def forward(self, video, audio, t):
            return self.noise.video, self.noise.audio

    oracle = Oracle()
    g = torch.Generator().manual_seed(9)
    oracle.noise = Latents(torch.randn(clean.video.shape, generator=g), torch.randn(clean.audio.shape, generator=g))
    loss, _ = diffusion.loss(oracle, clean, grid, generator=torch.Generator().manual_seed(9))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_condition_cells_come_out_bit_identical(task, sampler):
    diffusion = GridDiffusion()
    clean = clean_latents()
    out = diffusion.sample(random_model(), TASKS[task], clean, steps=3, sampler=sampler, guidance=2.0,
                           generator=torch.Generator().manual_seed(0))
    t_video, t_audio = diffusion.frame_steps((~TASKS[task]).long()[None].expand(2, -1, -1))
    assert torch.equal(out.video[:, :, t_video[0] == 0], clean.video[:, :, t_video[0] == 0])
    assert torch.equal(out.audio[:, :, t_audio[0] == 0], clean.audio[:, :, t_audio[0] == 0])
    assert not torch.equal(out.video[:, :, t_video[0] > 0], clean.video[:, :, t_video[0] > 0]) or task == "v2a"


def test_sampling_is_deterministic_from_the_generator():
    diffusion, model, clean = GridDiffusion(), random_model(), clean_latents()
    runs = [diffusion.sample(model, TASKS["a2v"], clean, steps=4, generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    assert torch.equal(runs[0].video, runs[1].video)


def test_ddim_with_a_perfect_model_recovers_the_data():
    # an oracle that knows x0 predicts eps exactly; deterministic DDIM then lands on x0
    diffusion = GridDiffusion()
    target = clean_latents(1)

    class Oracle(torch.nn.Module):
        def forward(self, video, audio, grid):
            t_video, t_audio = diffusion.frame_steps(grid)
            out = []
            for x, x0, t in ((video, target.video, t_video), (audio, target.audio, t_audio)):
                ab = diffusion.schedule.alpha_bar[t].reshape(1, 1, -1, *([1] * (x.dim() - 3)))
                out.append(torch.where(ab < 1, (x - ab.sqrt() * x0) / (1 - ab).clamp_min(1e-12).sqrt(), 0.0))
            return tuple(out)

    out = diffusion.sample(Oracle(), TASKS["joint"], Latents(torch.zeros_like(target.video), torch.zeros_like(target.audio)),
                           steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.video, target.video, atol=1e-3) and torch.allclose(out.audio, target.audio, atol=1e-3)


def test_v_prediction_round_trip():
    diffusion = GridDiffusion(prediction="v")
    clean = clean_latents()
    noise = torch.randn_like(clean.video)
    t = torch.full((2, 5), 400)
    x_t = diffusion.schedule.q_sample(clean.video, t, noise, time_dim=2)
    eps, x0 = diffusion.to_eps_x0(diffusion.target(clean.video, noise, t), x_t, t)
    assert torch.allclose(eps, noise, atol=1e-4) and torch.allclose(x0, clean.video, atol=1e-4)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_loss_weights_the_clean_latent_error_by_snr(prediction):
    """Chapter 7's identity: eps-MSE = SNR(t) |x0_hat - x0|^2 and v-MSE = (1 + SNR(t)) |x0_hat - x0|^2."""
    diffusion = GridDiffusion(prediction=prediction)
    clean = clean_latents()
    noise = torch.randn(clean.video.shape, generator=torch.Generator().manual_seed(5))
    output = torch.randn(clean.video.shape, generator=torch.Generator().manual_seed(6))  # any network output
    for step in (50, 500, 950):
        t = torch.full((2, 5), step)
        x_t = diffusion.schedule.q_sample(clean.video, t, noise, time_dim=2)
        loss = ((output - diffusion.target(clean.video, noise, t)) ** 2).mean()
        _, x0_hat = diffusion.to_eps_x0(output, x_t, t)
        x0_error = ((x0_hat - clean.video) ** 2).mean()
        snr = diffusion.schedule.snr(torch.tensor(step))
        weight = snr if prediction == "epsilon" else 1 + snr
        assert torch.allclose(loss, weight * x0_error, rtol=1e-3), (prediction, step)


def test_bad_arguments_are_clear_errors():
    diffusion = GridDiffusion()
    with pytest.raises(ValueError, match="unknown sampler"):
        diffusion.sample(random_model(), TASKS["a2v"], clean_latents(), sampler="euler")
    with pytest.raises(ValueError, match="no condition latents"):
        diffusion.sample(random_model(), TASKS["a2v"], None)
    with pytest.raises(ValueError, match="steps must be"):
        diffusion.step_sequence(0)
    with pytest.raises(ValueError, match="unknown prediction"):
        GridDiffusion(prediction="x0")


def test_latent_object_weights_find_the_object_and_keep_the_scale():
    from avdit_mini.diffusion import latent_object_weights

    video = torch.zeros(2, 8, 5, 8, 8) + torch.randn(2, 8, 5, 1, 1)   # a flat background per frame ...
    video[0, :, 1, 3, 4] += 3.0                                     # ... and an object in one cell of one frame
    weights = latent_object_weights(video, boost=4.0)
    assert weights.shape == (2, 1, 5, 8, 8)
    assert torch.allclose(weights.mean(dim=(3, 4)), torch.ones(2, 1, 5))  # mean 1 in every latent frame
    assert weights[0, 0, 1, 3, 4] == 5 * weights[0, 0, 1, 0, 0]            # the object weighs 1 + boost times more
    assert torch.equal(weights[1], torch.ones_like(weights[1]))             # no object: the plain mean


def test_object_boost_moves_the_loss_and_zero_is_the_plain_loss():
    diffusion, model, clean = GridDiffusion(), random_model(), clean_latents()
    grid = sample_timestep_grid(2, "monl", generator=torch.Generator().manual_seed(3))
    loss = lambda **kw: diffusion.loss(model, clean, grid, generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    plain, boosted = loss(), loss(object_boost=8.0)
    assert torch.equal(plain[0], loss(object_boost=0.0)[0])
    assert not torch.allclose(plain[0], boosted[0])
    assert torch.equal(plain[1][:, 1].nan_to_num(), boosted[1][:, 1].nan_to_num())  # the audio's cells are untouched


def test_latent_impact_weights_find_the_impact_and_keep_the_scale():
    from avdit_mini.diffusion import latent_impact_weights

    audio = torch.zeros(2, 8, 34) + torch.randn(2, 8, 1)    # a steady drone per clip ...
    audio[0, :, 10] += 4.0                                    # ... and one impact in clip 0
    weights = latent_impact_weights(audio, boost=4.0)
    assert weights.shape == (2, 1, 34)
    assert torch.allclose(weights.mean(dim=2), torch.ones(2, 1))
    assert weights[0, 0, 10] == 5 * weights[0, 0, 0]
    assert torch.equal(weights[1], torch.ones_like(weights[1]))


def test_impact_boost_moves_only_the_audio_loss():
    diffusion, model, clean = GridDiffusion(), random_model(), clean_latents()
    clean.audio[:, :, 5] += 6.0                                 # an impact to weigh
    grid = sample_timestep_grid(2, "monl", generator=torch.Generator().manual_seed(3))
    loss = lambda **kw: diffusion.loss(model, clean, grid, generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    plain, boosted = loss(), loss(impact_boost=8.0)
    assert not torch.allclose(plain[0], boosted[0])
    assert torch.equal(plain[1][:, 0].nan_to_num(), boosted[1][:, 0].nan_to_num())  # the video's cells are untouched


def test_one_step_guess_noises_the_targets_and_asks_once():
    diffusion, model, clean = GridDiffusion(), random_model(), clean_latents()
    mask = TASKS["continue_2"]
    generator = torch.Generator().manual_seed(0)
    noise = Latents(torch.randn(clean.video.shape, generator=generator), torch.randn(clean.audio.shape, generator=generator))
    noisy, guess = diffusion.one_step_guess(model, clean, mask, 600, noise)
    grid = torch.where(mask, 0, 600).long().expand(2, -1, -1)
    assert torch.equal(noisy.video, diffusion.q_sample(clean, grid, noise).video)
    with torch.no_grad():
        expected = diffusion.predict(model, noisy, grid)[1]
    assert torch.equal(guess.video, expected.video) and torch.equal(guess.audio, expected.audio)
    assert torch.equal(noisy.video[:, :, :2], clean.video[:, :, :2])       # the given segments stay clean
    assert not torch.equal(noisy.video[:, :, 2:], clean.video[:, :, 2:])   # the rest is noised


class Recorder(torch.nn.Module):
    """Passes calls to a model and keeps the estimate each call was given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls, self.inputs = inner, inner.config, [], []

    def forward(self, video, audio, grid, previous=None):
        self.calls.append(previous)
        self.inputs.append((video, audio, grid))
        return self.inner(video, audio, grid) if previous is None else self.inner(video, audio, grid, previous)


def self_conditioned_model(prediction: str = "epsilon") -> AVDiT:
    return random_model(prediction=prediction, self_condition=True).train()


def test_self_conditioning_loss_gives_half_the_batch_its_own_estimate():
    """The loss asks once without an estimate, then trains the call given that answer (clamped) for a
    random half of the batch; the estimate carries no gradient, the new layers get one; it draws
    nothing before the noise, so a plain run's noise is unchanged."""
    diffusion = GridDiffusion(prediction="v")
    model = self_conditioned_model("v")
    recorder = Recorder(model)
    clean = clean_latents(8)
    grid = torch.randint(1, 1000, (8, 2, 5), generator=torch.Generator().manual_seed(3))
    loss, _ = diffusion.loss(recorder, clean, grid, generator=torch.Generator().manual_seed(4), self_condition=True)
    assert len(recorder.calls) == 2 and recorder.calls[0] is None
    video_given, audio_given = recorder.calls[1]
    given = video_given.flatten(1).abs().sum(1) > 0
    assert torch.equal(given, audio_given.flatten(1).abs().sum(1) > 0)  # one coin per clip, both modalities
    assert 0 < given.sum() < 8 and not video_given.requires_grad
    g = torch.Generator().manual_seed(4)  # the loss's noise, drawn again
    noise = Latents(torch.randn(clean.video.shape, generator=g), torch.randn(clean.audio.shape, generator=g))
    with torch.no_grad():
        _, x0 = diffusion.predict(model, diffusion.q_sample(clean, grid, noise), grid)
    assert torch.allclose(video_given[given], x0.video.clamp(-6, 6)[given], atol=1e-5)
    loss.backward()
    assert model.video_self_embed.weight.grad.abs().sum() > 0 and model.audio_self_embed.weight.grad.abs().sum() > 0
    again, _ = diffusion.loss(model, clean, grid, generator=torch.Generator().manual_seed(4), self_condition=True)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)  # the coin comes from the generator
    # with its new layers at zero it is the plain network, and the coin comes after the noise: the plain loss
    with torch.no_grad():
        model.video_self_embed.weight.zero_()
        model.audio_self_embed.weight.zero_()
    plain = AVDiT(replace(model.config, self_condition=False))
    plain.load_state_dict(model.state_dict(), strict=False)
    at_zero, _ = diffusion.loss(model, clean, grid, generator=torch.Generator().manual_seed(4))  # None: it reads one
    plain_loss, _ = diffusion.loss(plain, clean, grid, generator=torch.Generator().manual_seed(4))
    assert at_zero.item() == pytest.approx(plain_loss.item(), rel=1e-6)


def test_a_self_conditioned_sampler_gives_each_step_the_last_estimate():
    """Step 1 has no guess; every later conditional call is handed the conditional branch's own last guess, its
    condition frames at their clean latents exactly (guided or not); MoNL guidance's unconditional branch keeps a
    chain of its own, which never sees the condition; conditions come out bit-identical; a plain autoguide model
    is asked without a guess."""
    diffusion, clean = GridDiffusion(), clean_latents()
    recorder = Recorder(self_conditioned_model().eval())
    task = TASKS["continue_2"]
    out = diffusion.sample(recorder, task, clean, steps=3, guidance=2.0, generator=torch.Generator().manual_seed(0))
    calls = recorder.calls
    assert len(calls) == 6 and calls[0] is None and calls[1] is None  # step 1: conditional and unconditional
    t_video, t_audio = diffusion.frame_steps((~task).long()[None].expand(2, -1, -1))
    given = t_video[0] == 0  # the condition's latent frames
    for conditional in (calls[2], calls[4]):
        assert torch.equal(conditional[0][:, :, given], clean.video[:, :, given])
        assert torch.equal(conditional[1][:, :, t_audio[0] == 0], clean.audio[:, :, t_audio[0] == 0])
    for unconditional in (calls[3], calls[5]):  # its own guesses: not the condition, not the conditional chain
        assert not torch.equal(unconditional[0][:, :, given], clean.video[:, :, given])
        assert not torch.equal(unconditional[0], calls[2][0])
    video_u, audio_u, grid_u = recorder.inputs[1]  # step 1's unconditional call: what it answered is what it gets next
    with torch.no_grad():
        _, guess_u = diffusion.predict(recorder.inner, Latents(video_u, audio_u), grid_u)
    assert torch.equal(calls[3][0], guess_u.video.clamp(-6, 6)) and torch.equal(calls[3][1], guess_u.audio.clamp(-6, 6))
    # the conditional chain hands on the model's own answer of step 1 (clamped), as in training
    video_1, audio_1, grid_1 = recorder.inputs[0]
    with torch.no_grad():
        _, guess_1 = diffusion.predict(recorder.inner, Latents(video_1, audio_1), grid_1)
    assert torch.equal(calls[2][0][:, :, ~given], guess_1.video.clamp(-6, 6)[:, :, ~given])
    assert torch.equal(out.video[:, :, given], clean.video[:, :, given])
    recorder.calls.clear()
    diffusion.sample(recorder, task, clean, steps=3, generator=torch.Generator().manual_seed(0))
    assert len(recorder.calls) == 3 and recorder.calls[0] is None and all(c is not None for c in recorder.calls[1:])
    # autoguidance: a plain guide is asked without a guess (it would refuse one); a self-conditioned guide gets its own
    diffusion.sample(recorder, task, clean, steps=3, guidance=2.0, guide_model=random_model(),
                     generator=torch.Generator().manual_seed(0))
    recorder.calls.clear()
    guide = Recorder(random_model(seed=1, self_condition=True).eval())
    diffusion.sample(recorder, task, clean, steps=3, guidance=2.0, guide_model=guide, generator=torch.Generator().manual_seed(0))
    assert guide.calls[0] is None and recorder.calls[0] is None
    video_g, audio_g, grid_g = guide.inputs[0]
    with torch.no_grad():
        _, guess_g = diffusion.predict(guide.inner, Latents(video_g, audio_g), grid_g)
    assert torch.equal(guide.calls[1][0][:, :, ~given], guess_g.video.clamp(-6, 6)[:, :, ~given])  # its own chain
    assert torch.equal(guide.calls[1][0][:, :, given], clean.video[:, :, given])
    assert not torch.equal(guide.calls[1][0], recorder.calls[1][0])



def test_sdedit_starts_the_targets_from_their_own_noised_latents():
    """start_step=tau: the target cells begin as the condition's own latents noised to tau (with the noise the sampler
    would have started from), and the sampler runs from tau down the same step grid; conditions stay bit-identical."""
    diffusion, clean = GridDiffusion(), clean_latents()
    calls = []

    class Silent(torch.nn.Module):  # predicts zero noise: each DDIM step rescales x, so the last x0 is x_tau / sqrt(ab_tau)
        def forward(self, video, audio, grid):
            calls.append(sorted(grid.unique().tolist()))
            return torch.zeros_like(video), torch.zeros_like(audio)

    tau, mask = 130, TASKS["continue_2"]
    out = diffusion.sample(Silent(), mask, clean, steps=50, generator=torch.Generator().manual_seed(3), start_step=tau)
    assert [c[-1] for c in calls] == [tau] + [t for t in diffusion.step_sequence(50) if 0 < t < tau]
    g = torch.Generator().manual_seed(3)
    noise = Latents(torch.randn(clean.video.shape, generator=g), torch.randn(clean.audio.shape, generator=g))
    ab = diffusion.schedule.alpha_bar[tau]
    target_v, target_a = diffusion.frame_steps((~mask).long()[None].expand(2, -1, -1))
    for x, c, n, target in ((out.video, clean.video, noise.video, target_v[:, None, :, None, None] > 0),
                            (out.audio, clean.audio, noise.audio, target_a[:, None, :] > 0)):
        expected = torch.where(target, c + ((1 - ab) / ab).sqrt() * n, c)
        assert torch.allclose(x, expected, atol=1e-4)
        assert torch.equal(x[~target.expand_as(x)], c[~target.expand_as(c)])  # the conditions, bit-identical
    calls.clear()
    from_noise = diffusion.sample(Silent(), mask, clean, steps=50, generator=torch.Generator().manual_seed(3))
    assert calls[0][-1] == diffusion.T and (from_noise.video - clean.video).abs().max() > 1
    calls.clear()  # from T, the same steps as without a start; a start on a grid step is not visited twice
    diffusion.sample(Silent(), mask, clean, steps=50, start_step=diffusion.T)
    assert [c[-1] for c in calls] == [t for t in diffusion.step_sequence(50) if t > 0]
    calls.clear()
    diffusion.sample(Silent(), mask, clean, steps=50, start_step=140)
    assert [c[-1] for c in calls] == [140, 120, 100, 80, 60, 40, 20]
    for bad in (0, diffusion.T + 1, 200.0):
        with pytest.raises(ValueError, match="start_step"):
            diffusion.sample(Silent(), mask, clean, steps=5, start_step=bad)
    with pytest.raises(ValueError, match="pass them as condition"):
        diffusion.sample(Silent(), TASKS["joint"], None, batch_size=2, steps=5, start_step=100,
                         latent_shapes=((8, 5, 8, 8), (8, 34)))


def test_counterfactual_error_asks_a_pair_to_differ_as_the_clips_do():
    """sum w (d - D)^2 / sum D^2 over noised frames, w = min(1, SNR): 0 when the guesses are the clips, 1 when a
    pair's guesses are the same (the shape ignored) at SNR >= 1, the same for a quiet change as for a loud one."""
    diffusion = GridDiffusion()
    clean = clean_latents(4).video                            # two pairs: 0 <-> 2, 1 <-> 3
    t = torch.full((4, 5), 100)                               # SNR > 1 everywhere
    assert diffusion.counterfactual_error(clean, clean, t, 2).item() == pytest.approx(0.0, abs=1e-12)
    same = torch.cat([clean[:2], clean[:2]])                  # each twin guessed as its original
    assert diffusion.counterfactual_error(same, clean, t, 2).item() == pytest.approx(1.0, rel=1e-5)
    quiet = torch.cat([clean[:2], clean[:2] + 0.2 * (clean[2:] - clean[:2])])   # a change 5x quieter, ignored alike
    quiet_same = torch.cat([quiet[:2], quiet[:2]])
    assert diffusion.counterfactual_error(quiet_same, quiet, t, 2).item() == pytest.approx(1.0, rel=1e-5)
    t_low_snr = torch.full((4, 5), 800)                       # below SNR 1 the clean-latent error is weighed by the SNR
    snr = (diffusion.schedule.alpha_bar[800] / (1 - diffusion.schedule.alpha_bar[800])).item()
    assert diffusion.counterfactual_error(same, clean, t_low_snr, 2).item() == pytest.approx(snr, rel=1e-4)
    assert diffusion.counterfactual_error(same, clean, t_low_snr, 2, gamma=0.0).item() == pytest.approx(1.0, rel=1e-5)
    assert diffusion.counterfactual_error(same, clean, t_low_snr, 2, gamma=snr / 2).item() == pytest.approx(1.0, rel=1e-4)
    clean_frames = t.clone()
    clean_frames[:, 1:] = 0                                   # only frame 0 noised: only it counts
    off = same.clone()
    off[2:, :, 1:] += 5.0                                     # the twins' guesses off in clean frames: not counted
    assert diffusion.counterfactual_error(off, clean, clean_frames, 2).item() == pytest.approx(1.0, rel=1e-5)


def test_twins_are_noised_as_their_originals_and_the_term_is_added():
    """loss(twins=K): the last K examples get the first K's noise, so the pair's inputs differ by sqrt(ab) D alone;
    the term, weighed, is added (and reported in extras); grids that differ within a pair are refused."""
    diffusion = GridDiffusion(prediction="v")
    model = random_model(prediction="v")
    recorder = Recorder(model)
    clean = clean_latents(6)
    grid = torch.randint(1, 1000, (4, 2, 5), generator=torch.Generator().manual_seed(3))
    grid = torch.cat([grid, grid[:2]])                        # 4 clips, the first 2 with a twin appended
    extras = {}
    with_term, _ = diffusion.loss(recorder, clean, grid, generator=torch.Generator().manual_seed(4), twins=2,
                                  counterfactual=0.5, extras=extras)
    g = torch.Generator().manual_seed(4)
    noise = Latents(torch.randn(clean.video.shape, generator=g), torch.randn(clean.audio.shape, generator=g))
    noise = Latents(torch.cat([noise.video[:4], noise.video[:2]]), torch.cat([noise.audio[:4], noise.audio[:2]]))
    noisy = diffusion.q_sample(clean, grid, noise)
    assert torch.equal(recorder.inputs[-1][0], noisy.video) and torch.equal(recorder.inputs[-1][1], noisy.audio)
    t_video, _ = diffusion.frame_steps(grid)
    root = diffusion.schedule.alpha_bar[t_video[:2]].sqrt().reshape(2, 1, 5, 1, 1)
    assert torch.allclose(noisy.video[4:] - noisy.video[:2], root * (clean.video[4:] - clean.video[:2]), atol=1e-5)
    assert extras["counterfactual"] > 0
    with torch.no_grad():
        _, x0 = diffusion.predict(model, noisy, grid)
    expected = sum(diffusion.counterfactual_error(e, c, t, 2) for e, c, t in
                   ((x0.video, clean.video, t_video), (x0.audio, clean.audio, diffusion.frame_steps(grid)[1])))
    assert extras["counterfactual"].item() == pytest.approx(expected.item(), rel=1e-4)
    paired, _ = diffusion.loss(model, clean, grid, generator=torch.Generator().manual_seed(4), twins=2)  # weight 0
    assert with_term.item() == pytest.approx(paired.item() + 0.5 * expected.item(), rel=1e-4)
    grid[5, 0, 0] = (grid[5, 0, 0] % 999) + 1                  # a twin at another noise level
    with pytest.raises(ValueError, match="same timestep grids"):
        diffusion.loss(model, clean, grid, twins=2)
    with pytest.raises(ValueError, match="twins=4"):
        diffusion.loss(model, clean, grid, twins=4)
    grid[5, 0, 0] = grid[1, 0, 0]
    with pytest.raises(ValueError, match="v prediction"):   # gamma 0 with epsilon: the clean-latent error ~ 1 / SNR
        GridDiffusion().loss(random_model(), clean, grid, twins=2, counterfactual=1.0, counterfactual_gamma=0.0)


def test_a_twin_is_given_an_estimate_exactly_when_its_original_is():
    """Self-conditioning with twins: the coin that keeps an estimate is shared within a pair."""
    diffusion = GridDiffusion(prediction="v")
    model = self_conditioned_model("v")
    clean = clean_latents(12)
    grid = torch.randint(1, 1000, (6, 2, 5), generator=torch.Generator().manual_seed(3))
    noisy = diffusion.q_sample(clean, torch.cat([grid, grid]), Latents(torch.randn_like(clean.video), torch.randn_like(clean.audio)))
    video, _ = diffusion.own_estimate(model, noisy, torch.cat([grid, grid]), torch.Generator().manual_seed(0), twins=6)
    given = video.flatten(1).abs().sum(1) > 0
    assert torch.equal(given[:6], given[6:]) and 0 < given.sum() < 12


def test_hidden_frames_give_a_twin_its_originals_input():
    """counterfactual_hide=H: in latent frames at step H or above the twin's noisy input is its original's (the
    noise hides the shape there), below H its own; the originals' inputs are untouched."""
    diffusion = GridDiffusion(prediction="v")
    recorder = Recorder(random_model(prediction="v"))
    clean = clean_latents(6)
    grid = torch.tensor([[[0, 0, 500, 500, 300], [0, 0, 800, 800, 100]]] * 4)
    grid = torch.cat([grid, grid[:2]])
    diffusion.loss(recorder, clean, grid, generator=torch.Generator().manual_seed(4), twins=2, counterfactual=1.0)
    own_video, own_audio, _ = recorder.inputs[-1]
    diffusion.loss(recorder, clean, grid, generator=torch.Generator().manual_seed(4), twins=2, counterfactual=1.0,
                   counterfactual_hide=400)
    video, audio, _ = recorder.inputs[-1]
    assert torch.equal(video[:4], own_video[:4]) and torch.equal(audio[:4], own_audio[:4])
    hidden = [2, 3]                                           # video latent frame f is segment f: t = 500 at 2 and 3
    assert torch.equal(video[4:][:, :, hidden], video[:2][:, :, hidden])
    assert torch.equal(video[4:][:, :, [0, 1, 4]], own_video[4:][:, :, [0, 1, 4]])
    _, t_audio = diffusion.frame_steps(grid)
    at_800 = (t_audio[4] >= 400)
    assert at_800.any() and torch.equal(audio[4][:, at_800], audio[0][:, at_800])
    assert torch.equal(audio[4][:, ~at_800], own_audio[4][:, ~at_800]) and not torch.equal(audio[4], audio[0])
