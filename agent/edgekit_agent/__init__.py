"""edgekit-agent: the device side of edgekit.

This package must stay importable on a small board: it never imports torch, nncf or the host
package ``edgekit`` (a test enforces it). Heavy runtimes (ONNX Runtime, OpenVINO) are imported
lazily by the modules that run inference.
"""

__version__ = "0.1.0"
