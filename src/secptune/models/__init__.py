"""Hugging Face BERT/RoBERTa models on one code path for plaintext and shared tensors."""

from .rfa import converted_minilm_folder, load_attention
from .scoring import Batch, MaskedLMTask, PlainScorer, SecureScorer, SentenceTask, tokenize
from .transformer import AttentionSettings, Transformer
from .weights import ModelConfig, ModelFolderError, ModelWeights, load_model, random_model

__all__ = ["AttentionSettings", "Batch", "MaskedLMTask", "ModelConfig", "ModelFolderError", "ModelWeights",
           "PlainScorer", "SecureScorer", "SentenceTask", "Transformer", "converted_minilm_folder", "load_attention", "load_model", "random_model", "tokenize"]
