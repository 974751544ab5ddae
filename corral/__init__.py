"""Corral: an LLM inference gateway built on Envoy.

Envoy carries every byte; Corral's control plane (an ext_proc server and an ADS
server sharing one worker registry) decides which worker serves each request.
"""

__version__ = "0.1.0"
