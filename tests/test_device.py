"""Device logic, exercised on the CPU: the same code runs on CUDA (no GPU here)."""

import pytest
import torch

from flnorm.config import ExperimentConfig
from flnorm.data.federated import _on_device
from flnorm.device import configure_backends, place, resolve_device
from flnorm.runner.simulation import backend_config
from flnorm.task import ClientTask, new_model

CUDA = torch.cuda.is_available()


def test_auto_takes_cuda_exactly_when_it_is_visible():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu").type == "cpu"


def test_cuda_without_a_gpu_is_refused_with_the_way_out():
    if CUDA:
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="no CUDA device is visible"):
            resolve_device("cuda")


def test_cudnn_autotuning_only_for_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    configure_backends(torch.device("cuda"))  # a flag: set without touching a GPU
    assert torch.backends.cudnn.benchmark is True


def test_place_moves_conv_weights_to_channels_last_only_when_asked():
    def second_conv(model):  # 64 input channels: the two layouts differ (the first conv has 1)
        return [p for p in model.parameters() if p.dim() == 4][1]

    cfg = ExperimentConfig()
    assert second_conv(place(new_model(cfg), torch.device("cpu"), channels_last=False)).is_contiguous()
    conv = second_conv(place(new_model(cfg), torch.device("cpu"), channels_last=True))
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_a_process_puts_the_dataset_and_one_model_on_its_device_once():
    """Every message builds a ClientTask; the device copies behind it are made once per process."""
    cfg = ExperimentConfig(clients=4)
    first, second = ClientTask(cfg, 0), ClientTask(cfg, 3)
    assert first.model is second.model  # one model object, weights reloaded per call
    device = resolve_device(cfg.device)
    on_device = _on_device(cfg.dataset, cfg.data_dir, cfg.download, str(device))
    assert on_device is _on_device(cfg.dataset, cfg.data_dir, cfg.download, str(device))
    for task in (first, second):
        assert task.data.train_x.device.type == device.type
        assert task.transform.scale.device.type == device.type
        assert next(task.model.parameters()).device.type == device.type


def test_per_client_resources_reach_flowers_ray_backend():
    cfg = ExperimentConfig(num_cpus=2, num_gpus=0.25, ray_cpus=6)
    config = backend_config(cfg)
    assert config["client_resources"] == {"num_cpus": 2, "num_gpus": 0.25}
    assert config["init_args"]["num_cpus"] == 6
    assert "num_cpus" not in backend_config(ExperimentConfig())["init_args"]  # all of the machine
