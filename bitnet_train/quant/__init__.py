"""BitNet quantization: pure quantizers, the BitLinear layer and the model converter."""

from bitnet_train.quant.bitlinear import BitLinear
from bitnet_train.quant.convert import bitlinear_modules, quantize_model, set_lambda
from bitnet_train.quant.functional import quantize_activation, quantize_weight, weight_scale
from bitnet_train.quant.norm import RMSNorm

__all__ = ["BitLinear", "RMSNorm", "bitlinear_modules", "quantize_activation", "quantize_model",
           "quantize_weight", "set_lambda", "weight_scale"]
