"""Peak FLOP/s for MFU: the datasheet table, the spec's value, the measured matmul rate."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scaling.throughput import datasheet_peak, detect_peak, matmul_rate, peak_matmul_size


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA H100 80GB HBM3", "fp32", 67e12),
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H100 NVL", "bf16", 835e12),
    ("NVIDIA H200", "bf16", 989e12),
    ("NVIDIA GH200 480GB", "bf16", 989e12),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
    ("NVIDIA L4", "bf16", 121e12),
    ("NVIDIA L40S", "bf16", 362e12),
])
def test_datasheet_peaks_pick_the_specific_variant(name, precision, peak):
    assert datasheet_peak(name, precision) == peak


def test_unknown_devices_have_no_datasheet_peak():
    assert datasheet_peak("NVIDIA GeForce GTX 1080", "bf16") is None


def test_spec_value_wins_and_cpu_peaks_are_measured():
    assert detect_peak(torch.device("cpu"), "bf16", configured=5e11).flops == 5e11
    measured = detect_peak(torch.device("cpu"), "fp32")
    assert measured.source.startswith("measured: fp32 torch.mm on cpu")
    assert 1e8 < measured.flops < 1e14
    assert detect_peak(torch.device("cpu"), "fp32") == measured  # measured once per process


def test_matmul_rate_counts_two_flops_per_multiply_add():
    # The rate's numerator, 2 n^3, is what torch's own FLOP counter gives an n x n x n mm.
    a = torch.randn(96, 96)
    with FlopCounterMode(display=False) as counter:
        torch.mm(a, a)
    assert counter.get_total_flops() == 2 * 96**3
    # Timings move with the load on a shared machine, so only their sanity is checked here.
    for n in (64, 512):
        assert 1e6 < matmul_rate(n=n, repeats=3) < 1e14


def test_small_cpus_measure_their_peak_on_a_cheaper_matmul():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert peak_matmul_size(cpu, 1) == peak_matmul_size(cpu, 4) == 1024
    assert peak_matmul_size(cpu, 16) == peak_matmul_size(gpu, 1) == 2048
