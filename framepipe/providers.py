"""Execution-provider choice for onnxruntime, kept in one place.

onnxruntime silently falls back to the CPU when CUDA cannot be used (for example when the CPU build of
onnxruntime is installed next to onnxruntime-gpu, which ``pip install insightface onnxruntime-gpu`` does), so
the device reported to users is read back from the created session, never assumed.
"""

from __future__ import annotations

import logging
import os

import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(device: str = "auto") -> list[str]:
    """Providers to ask for: CUDA first when asked for or available, CPU always as the fallback."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda" or (device == "auto" and CUDA in available):
        if CUDA not in available:
            log.warning("CUDA was asked for but this onnxruntime build has no CUDA provider (%s)", available)
        return [CUDA, CPU]
    return [CPU]


def session_options(intra_op_threads: int = 0, allow_spinning: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not allow_spinning:
        # Spinning threads burn a core while idle, and that core is the one decoding the next frame.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def active_device(session: ort.InferenceSession) -> str:
    """The device a session really runs on: 'cuda' or 'cpu'."""
    return "cuda" if session.get_providers() and session.get_providers()[0] == CUDA else "cpu"
