"""edgefleet: ML models shipped to edge fleets as Pulumi infrastructure-as-code.

Kept import-light on purpose: the signing path and the device agent import pieces of this package
and must not pay for Pulumi or onnxruntime.
"""

__version__ = "0.1.0"
