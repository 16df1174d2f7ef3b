import math

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from fedleak import metrics as M


pytestmark = pytest.mark.usefixtures("one_thread")


def _imgs(b=3, s=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish random images so SSIM is not trivially ~0
    x = torch.rand(b, 3, s // 4, s // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(b, 3, s, s, generator=g)).clamp(0, 1)


def test_identical_images():
    x = _imgs()
    assert torch.isinf(M.psnr(x, x)).all()
    assert torch.allclose(M.psnr(x, x, cap=100.0), torch.full((3,), 100.0, dtype=torch.float64))
    assert torch.allclose(M.ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(M.ssim_rog(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(M.haarpsi(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(M.perceptual(x, x), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_single_image_shape():
    x = _imgs(1)[0]
    assert M.psnr(x, x * 0.5).shape == (1,)
    assert M.ssim(x, x * 0.5).shape == (1,)


def test_psnr_known_mse():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # mse = 0.01 -> 10*log10(1/0.01) = 20 dB
    b[1, :, :4] = 1.0  # half the pixels off by 1 -> mse 0.5 -> 3.0103 dB
    out = M.psnr(a, b)
    assert out[0].item() == pytest.approx(20.0, abs=1e-5)
    assert out[1].item() == pytest.approx(10 * math.log10(2), abs=1e-9)
    # 255-scale definition: 10 log10(255^2 / mse_255)
    mse255 = ((a[0] * 255 - b[0] * 255) ** 2).mean().item()
    assert out[0].item() == pytest.approx(10 * math.log10(255**2 / mse255), abs=1e-6)


@pytest.mark.parametrize("size", [16, 32, 41])
def test_ssim_matches_skimage(size):
    a = _imgs(2, size, seed=1)
    b = (a + 0.15 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    ours = M.ssim(a, b)
    for i in range(2):
        ref = structural_similarity(
            a[i].permute(1, 2, 0).double().numpy(), b[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1, data_range=1,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)
    assert (ours < 0.99).all()


def test_ycrcb_bit_exact_with_opencv():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 3, 17, 19), generator=g)
    x[0, :, 0, :3] = torch.tensor([[0, 255, 255], [0, 255, 0], [0, 255, 0]])  # extremes
    ours = M.rgb_to_ycrcb_uint8(x)
    for i in range(2):
        ref = cv2.cvtColor(np.ascontiguousarray(x[i].permute(1, 2, 0).numpy().astype(np.uint8)),
                           cv2.COLOR_RGB2YCrCb)
        assert np.array_equal(ours[i].permute(1, 2, 0).numpy(), ref.astype(np.int64))


def _rog_reference(a, b):
    """Independent numpy/OpenCV reference of the ROG metric: uint8 -> cv2 YCrCb -> global SSIM."""
    def q(x):
        return np.round(np.clip(x.permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)

    def g(u, v):
        u, v = u.astype(np.float64), v.astype(np.float64)
        C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        C3 = C2 / 2
        mu, mv = u.mean(), v.mean()
        su, sv = u.std(), v.std()
        cov = ((u - mu) * (v - mv)).mean()
        return ((2 * mu * mv + C1) / (mu**2 + mv**2 + C1) * (2 * su * sv + C2) / (su**2 + sv**2 + C2)
                * (cov + C3) / (su * sv + C3))

    ya = cv2.cvtColor(q(a), cv2.COLOR_RGB2YCrCb)
    yb = cv2.cvtColor(q(b), cv2.COLOR_RGB2YCrCb)
    return 0.8 * g(ya[..., 0], yb[..., 0]) + 0.1 * g(ya[..., 1], yb[..., 1]) + 0.1 * g(ya[..., 2], yb[..., 2])


def test_ssim_rog_matches_reference():
    a = _imgs(3, 20, seed=4)
    b = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    b[2] = 1 - a[2]  # a very different pair (negative structure term)
    ours = M.ssim_rog(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(_rog_reference(a[i], b[i]), abs=1e-10)
    assert ours[2] < 0.2
    # global: a spatial shuffle of the same pixels changes the structure term but not luminance/contrast
    assert ours[0] < 1


def test_haarpsi_properties():
    a = _imgs(1, 32, seed=6)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(7))
    d = [M.perceptual(a, (a + s * noise).clamp(0, 1)).item() for s in (0.02, 0.1, 0.3)]
    assert 0 < d[0] < d[1] < d[2] <= 1
    b = (a + 0.1 * noise).clamp(0, 1)
    assert M.haarpsi(a, b).item() == pytest.approx(M.haarpsi(b, a).item(), abs=1e-12)  # symmetric
    # flat images: defined (no 0/0), identical -> 1
    flat = torch.full((1, 3, 16, 16), 0.5)
    assert M.haarpsi(flat, flat).item() == pytest.approx(1.0)
    # tiny images work
    assert torch.isfinite(M.haarpsi(_imgs(1, 4), _imgs(1, 4, seed=9))).all()


def test_haarpsi_against_piq():
    piq = pytest.importorskip("piq")
    a = _imgs(2, 64, seed=10)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(11))).clamp(0, 1)
    ref = piq.haarpsi(a, b, reduction="none", data_range=1.0)
    assert torch.allclose(M.haarpsi(a, b).float(), ref.float(), atol=2e-2)


def test_label_accuracy():
    assert M.label_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert M.label_accuracy(torch.tensor([2, 1]), torch.tensor([1, 2])) == 0.0
    assert M.label_accuracy([2, 1], [1, 2], ordered=False) == 1.0
    assert M.label_accuracy([1, 1, 3], [1, 2, 3], ordered=False) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.label_accuracy([1], [1, 2])


def test_match_recovers_shuffle():
    x = _imgs(6, 16, seed=12)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    rec = x[perm] + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(13))
    p = M.match(x, rec)
    assert torch.equal(perm[torch.tensor(p)], torch.arange(6))  # rec[p[i]] is x[i]
    assert torch.allclose(rec[p], x, atol=0.1)


def test_evaluate_with_shuffled_reconstruction_and_labels():
    from fedleak.attacks import Reconstruction

    x = _imgs(4, 16, seed=14)
    y = torch.tensor([5, 6, 7, 8])
    perm = torch.tensor([2, 3, 0, 1])
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(15))).clamp(0, 1)
    rec = Reconstruction(images=noisy[perm], labels=y[perm])
    res = M.evaluate(x, rec, true_labels=y)
    assert res["num_images"] == 4
    assert res["label_accuracy"] == 1.0 and res["label_set_accuracy"] == 1.0
    direct = M.psnr(x, noisy, cap=100).tolist()
    assert res["per_image"]["psnr"] == pytest.approx(direct)
    assert res["mean"]["psnr"] == pytest.approx(sum(direct) / 4)
    for k in ("ssim", "ssim_rog", "perceptual"):
        assert len(res["per_image"][k]) == 4 and isinstance(res["mean"][k], float)
    # a tensor works too, identical -> capped PSNR, SSIM 1
    same = M.evaluate(x, x)
    assert same["mean"]["psnr"] == 100.0 and same["mean"]["ssim"] == pytest.approx(1.0)
    assert same["permutation"] == [0, 1, 2, 3]


def test_evaluate_masks():
    x = _imgs(2, 16, seed=16)
    rec = x.clone()
    rec[:, :, :, 8:] = 0  # right half destroyed
    masks = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    masks[:, :, :, :6] = True  # subject on the left, untouched
    res = M.evaluate(x, rec, masks=masks)
    assert res["mean"]["psnr_subject"] == 100.0
    assert res["mean"]["psnr_subject"] > res["mean"]["psnr"]
    assert res["mean"]["ssim_subject"] > res["mean"]["ssim"]
    # masked PSNR equals PSNR of the masked pixels alone
    m = M.masked_psnr(x, x * 0.9, masks)
    sel = masks.expand_as(x)
    mse = ((x - x * 0.9)[sel].double() ** 2).reshape(2, -1).mean(1)
    assert torch.allclose(m, 10 * torch.log10(1 / mse), atol=1e-6)
    with pytest.raises(ValueError):
        M.evaluate(x, rec, masks=torch.ones(2, 16, 16, 1))


def _haarpsi_reference(ref, dist):
    """Straightforward numpy/scipy transcription of the HaarPSI definition (paper, Sec. 3; 0..255 scale)."""
    from scipy.signal import convolve2d

    C, alpha = 30.0, 4.2
    r, d = (np.clip(x.permute(1, 2, 0).double().numpy(), 0, 1) * 255 for x in (ref, dist))

    def yiq(x):
        return (x @ np.array([0.299, 0.587, 0.114]), x @ np.array([0.596, -0.274, -0.322]),
                x @ np.array([0.211, -0.523, 0.312]))

    def sub(x):
        return convolve2d(x, np.ones((2, 2)) / 4, mode="same")[::2, ::2]

    (ry, ri, rq), (dy, di, dq) = ([sub(c) for c in yiq(x)] for x in (r, d))

    def haar(x):
        hs, vs = [], []
        for j in (1, 2, 3):
            f = 2.0**-j * np.ones((2**j, 2**j))
            f[: 2**j // 2] *= -1
            hs.append(convolve2d(x, f, mode="same"))
            vs.append(convolve2d(x, f.T, mode="same"))
        return hs, vs

    def s(u, v):
        return (2 * u * v + C) / (u**2 + v**2 + C)

    hr, hd = haar(ry), haar(dy)
    sims, ws = [], []
    for o in (0, 1):
        ws.append(np.maximum(np.abs(hr[o][2]), np.abs(hd[o][2])))
        sims.append((s(np.abs(hr[o][0]), np.abs(hd[o][0])) + s(np.abs(hr[o][1]), np.abs(hd[o][1]))) / 2)
    m = lambda x: np.abs(convolve2d(x, np.ones((2, 2)) / 4, mode="same"))  # noqa: E731
    sims.append((s(m(ri), m(di)) + s(m(rq), m(dq))) / 2)
    ws.append((ws[0] + ws[1]) / 2)
    S, W = np.stack(sims), np.stack(ws)
    v = (W / (1 + np.exp(-alpha * S))).sum() / W.sum()
    return (np.log(v / (1 - v)) / alpha) ** 2


@pytest.mark.parametrize("size", [16, 33])
def test_haarpsi_matches_reference(size):
    a = _imgs(2, size, seed=20)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(21))).clamp(0, 1)
    b[1] = torch.roll(a[1], 2, dims=-1)
    ours = M.haarpsi(a, b)
    for i in range(2):
        assert ours[i].item() == pytest.approx(_haarpsi_reference(a[i], b[i]), abs=1e-10)
