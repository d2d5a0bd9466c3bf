"""Emulated GPU nodes that speak the real wire protocols and make real (synthetic) video."""
