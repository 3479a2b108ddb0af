import numpy as np
import pytest
import torch

from avdit_mini import media
from avdit_mini.data import VideoFolderDataset, World


@pytest.fixture(scope="module")
def clip():
    return World().clip(2)


def test_mp4_round_trip_through_the_folder_dataset(tmp_path, clip):
    media.write_mp4(tmp_path / "a.mp4", clip.video, clip.audio)
    dataset = VideoFolderDataset(tmp_path)
    item = dataset[0]
    assert item["video"].shape == (3, 17, 64, 64) and item["audio"].shape == (34000,)
    psnr = 10 * torch.log10(1 / ((item["video"] - clip.video) ** 2).mean())
    assert psnr > 30
    assert np.corrcoef(item["audio"], clip.audio)[0, 1] > 0.99  # AAC keeps it, with no delay


def test_folder_dataset_resamples_other_geometries(tmp_path, clip):
    # a 128 x 96 clip at 16 fps and 3 s becomes the book's 64 x 64, 8 fps, 2.125 s
    video = clip.video.repeat_interleave(2, dim=1)[:, :, :, :]  # 34 frames at 16 fps
    video = torch.cat([video, video[:, :14]], dim=1)  # 48 frames = 3 s
    video = torch.nn.functional.interpolate(video, size=(96, 128), mode="nearest")
    audio = torch.cat([clip.audio, clip.audio[:14000]])  # 3 s
    media.write_mp4(tmp_path / "big.mp4", video, audio, fps=16, sample_rate=16000)
    item = VideoFolderDataset(tmp_path)[0]
    assert item["video"].shape == (3, 17, 64, 64) and item["audio"].shape == (34000,)


def test_too_short_or_silent_or_broken_files_name_the_file(tmp_path, clip):
    media.write_mp4(tmp_path / "short.mp4", clip.video[:, :8], clip.audio[:16000])
    with pytest.raises(ValueError, match="short.mp4 lasts"):
        VideoFolderDataset(tmp_path)
    (tmp_path / "short.mp4").unlink()
    media.write_mp4(tmp_path / "silent.mp4", clip.video, None)
    with pytest.raises(ValueError, match="silent.mp4 has no audio"):
        VideoFolderDataset(tmp_path)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    media.write_mp4(tmp_path / "good.mp4", clip.video, clip.audio)
    with pytest.warns(UserWarning, match="skipping"):
        dataset = VideoFolderDataset(tmp_path, skip_bad=True)
    assert [p.name for p in dataset.paths] == ["good.mp4"]


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download clips"):
        VideoFolderDataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no .mp4"):
        VideoFolderDataset(tmp_path)


def test_wav_round_trip(tmp_path, clip):
    media.write_wav(tmp_path / "a.wav", clip.audio)
    audio, rate = media.read_wav(tmp_path / "a.wav")
    assert rate == 16000 and torch.allclose(audio, clip.audio, atol=1e-4)


def test_player_html_embeds_a_playable_mp4(clip):
    html = media.clip_html(clip.video, clip.audio, caption="hello")
    assert "<video" in html and "data:video/mp4;base64," in html and "hello" in html


def test_wrong_shapes_are_clear_errors(clip):
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        media.clip_html(clip.video[0], clip.audio)
    with pytest.raises(ValueError, match="mono"):
        media.write_wav("x.wav", clip.audio[None])


def test_clip_figure_has_frames_waveform_and_spectrogram(clip):
    import matplotlib

    matplotlib.use("Agg")
    fig = media.clip_figure(clip.video, clip.audio, n_frames=5)
    assert len(fig.axes) == 5 + 2
