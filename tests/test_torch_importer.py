"""cnnrt.from_torch against PyTorch itself: a small residual CNN with BatchNorm, exported by
PyTorch's own ONNX exporter and read by cnnrt's ONNX importer, on fresh random inputs."""
import numpy as np
import pytest

try:  # first: the cheap check (importing torch takes seconds)
    import cnnrt.importers.onnx  # noqa: F401
except ImportError:
    pytest.skip("needs cnnrt.importers.onnx", allow_module_level=True)
pytest.importorskip("onnx", reason="the ONNX importer needs onnx: pip install 'cnnrt[onnx]'")
torch = pytest.importorskip("torch", reason="PyTorch is an extra: pip install 'cnnrt[torch]'")

import cnnrt  # noqa: E402
from cnnrt import backends  # noqa: E402
from cnnrt.errors import FormatError  # noqa: E402

nn = torch.nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallResNet(nn.Module):
    def __init__(self, classes=7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block(8)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x):
        return self.head(self.pool(self.block(self.stem(x))))


def random_net(rng):
    torch.manual_seed(int(rng.integers(2**31)))
    net = SmallResNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics that do something
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def torch_out(net, x_nhwc):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy().astype(np.float64)


def test_small_resnet_matches_torch(rng):
    net = random_net(rng)
    g = cnnrt.from_torch(net, torch.zeros(1, 3, 20, 18), name="small")
    assert g.input_shape == (20, 18, 3)  # NHWC for the engine
    assert not any(n.op == "BatchNormalization" for n in g.nodes)
    x = rng.standard_normal((3, 20, 18, 3)).astype(np.float32)  # a batch other than the export's
    want = torch_out(net, x)
    got = backends.prepare(g, "numpy", "fp32").probabilities(x).astype(np.float64)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, f"max error {err:.3g} of the largest logit"
    assert (got.argmax(1) == want.argmax(1)).all()
    assert net.training is False


def test_pixels_with_torchvision_normalisation(rng):
    net = random_net(rng)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    g = cnnrt.from_torch(net, torch.zeros(2, 3, 16, 16), mean=mean, std=std)
    assert g.preprocess["mean"] == pytest.approx(mean) and g.preprocess["std"] == pytest.approx(std)
    pixels = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    x = (pixels.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    want = torch_out(net, x)
    got = backends.prepare(g, "numpy", "fp32").probabilities(pixels).astype(np.float64)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_training_mode_is_restored_and_bad_arguments_refused(rng):
    net = random_net(rng).train()
    cnnrt.from_torch(net, torch.zeros(1, 3, 8, 8))
    assert net.training is True
    with pytest.raises(FormatError, match="expected a torch.nn.Module"):
        cnnrt.from_torch(lambda x: x, torch.zeros(1, 3, 8, 8))
    with pytest.raises(FormatError, match="example_input must be one torch.Tensor"):
        cnnrt.from_torch(net, np.zeros((1, 3, 8, 8), np.float32))
