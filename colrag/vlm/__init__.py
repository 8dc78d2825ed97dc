"""The model layer: Qwen2-VL / ColQwen2 on ONNX graphs, no torch.

Pixels and prompts in (preprocess, tokenization, constants, chat, rope), graphs run
(backends, runtime, bundle, verified), vectors and answers out (retriever, generator and its
generation types, sampling, prefix_cache, image_features). The pipeline steps that use it (indexer,
search, ask) sit one level up in colrag/.
"""
