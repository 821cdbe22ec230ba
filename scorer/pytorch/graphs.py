"""CUDA graphs for the fine-tuning steps (`scorer train --cuda-graphs MODE`, MODE in scorer.config.CUDA_GRAPHS).

At batch 32 a GPU training step is about a thousand small kernel launches, and the GPU waits on Python between
them; a CUDA graph replays all of a step's forward (or backward) kernels with one launch. A graph has fixed
shapes, so there is one per batch shape, and the training batches' widths are rounded up to a multiple of
WIDTH_MULTIPLE to keep the shapes few. Two ways to get the graphs:

- compiled: `torch.compile(mode="reduce-overhead")`: inductor fuses the kernels, then captures them. Measured on an
  H200 (bench/RESULTS.md 7.10): a bert-base-shaped CoLA epoch in 3.35 s against 7.3-8.0 s eager, after about a
  minute of compiling in the first epoch (MiniLM: 25 s).
- captured: `torch.cuda.make_graphed_callables` on the eager model, one capture per shape: no compile, a few eager
  warm-up passes per new shape instead; each shape's graph keeps its own gradient buffers (one set of gradients
  per shape in GPU memory).
  The gradients a replay hands back live in the graph's own buffers, and the next replay of that shape overwrites
  them (pytorch/pytorch#181723): safe here because every step applies its gradients (clip, optimizer step) before
  the next replay and sets them to None before each backward; accumulating gradients over several batches would
  need them copied first.

torch.compile (`--compile`, or the compiled graphs) builds kernels with the machine's compiler: check_compiler
refuses, before any work, a machine without one or without Python's headers.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path

import torch

from scorer.errors import ConfigError

WIDTH_MULTIPLE = 8


def training_forward(model: torch.nn.Module, mode: str, compile_model: bool) -> Callable:
    """What the training steps call instead of `model(input_ids, attention_mask)`; it shares the model's
    parameters, so validation, the moving average and the checkpoint keep using `model` itself."""
    if mode == "compiled":
        return torch.compile(model, dynamic=True, mode="reduce-overhead")
    if mode == "captured":
        return CapturedSteps(model)
    # Dynamic shapes: one compiled graph for every batch length, not one compile per length bucket.
    return torch.compile(model, dynamic=True) if compile_model else model


def check_compiler(compile_model: bool, mode: str, device: str) -> None:
    """torch.compile builds its kernels on this machine as Python extension modules: on the CPU inductor's C++
    (a C++ compiler), on CUDA Triton's launchers (a C compiler), both with Python's headers. Where one was missing
    (a slim container, a scoring box), the first training step failed after the data was read: 'unexpected
    InductorError' (exit 1) and pages of compiler output. Refuse before any work, saying what to install."""
    if not compile_model and mode != "compiled":
        return
    option = "--cuda-graphs compiled" if mode == "compiled" else "--compile"
    missing = []
    if device == "cuda" and not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        missing.append("a C compiler (gcc or clang on PATH, or CC)")  # (as Triton looks for one)
    if device != "cuda" and not _cxx_compiler():
        missing.append("a C++ compiler (g++ on PATH, or CXX)")
    headers = Path(sysconfig.get_paths(scheme="posix_prefix")["include"]) / "Python.h"
    if not headers.is_file() and not (Path(sysconfig.get_path("include")) / "Python.h").is_file():
        missing.append(f"Python's headers ({headers})")
    if missing:
        raise ConfigError(f"{option} needs what torch.compile builds its kernels with, and this machine lacks "
                          f"{' and '.join(missing)}: install them (Debian or Ubuntu: apt install "
                          f"{'gcc' if device == 'cuda' else 'g++'} python3-dev), or train without {option}")


def _cxx_compiler() -> bool:
    """Whether inductor finds a working C++ compiler, by its own search (it runs each candidate's --version)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # (a torch whose inductor is laid out otherwise: let torch.compile say)
        return True
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        return False
    return True


def begin_step(mode: str) -> None:
    """Before each step: with compiled graphs, tell torch that the last step's graph outputs are spent."""
    if mode == "compiled":
        torch.compiler.cudagraph_mark_step_begin()


class CapturedSteps:
    """The model's training forward and backward captured as CUDA graphs, one pair per input shape, on first use."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.graphed: dict[tuple[int, ...], Callable] = {}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        shape = tuple(input_ids.shape)
        step = self.graphed.get(shape)
        if step is None:
            # A fresh wrapper per shape: make_graphed_callables replaces the forward of the module it is given.
            # The sample tensors become the graph's static inputs, so they are copies no one else holds.
            # Unused inputs are allowed: the encoder's pooler gets no gradient under mean pooling, as in eager steps.
            step = torch.cuda.make_graphed_callables(_Forward(self.model), (input_ids.clone(), attention_mask.clone()),
                                                     allow_unused_input=True)
            self.graphed[shape] = step
        return step(input_ids, attention_mask)


class _Forward(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)
