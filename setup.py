from setuptools import find_packages, setup

setup(
    name="tencentpretrain",
    version="0.1.0",
    description="Registry-based pretraining framework for LLaMA-family models, TencentPretrain-compatible",
    # models/ (the zoo's JSON configs) stays at the repository root and ships as tencentpretrain/zoo/ (model_zoo.py)
    packages=find_packages(include=["tencentpretrain", "tencentpretrain.*"]) + ["tencentpretrain.zoo"],
    package_dir={"tencentpretrain.zoo": "models"},
    package_data={"tencentpretrain.generation.native": ["csrc/*.c", "csrc/*.h"],  # compiled on first use
                  "tencentpretrain.zoo": ["*.json", "*/*.json"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "sentencepiece", "numpy", "regex", "safetensors", "tqdm", "jinja2>=3.1",
                      "tokenizers>=0.19"],
    extras_require={
        "deepspeed": ["deepspeed>=0.14"],
        "test": ["pytest", "transformers>=4.40", "openai", "ruff", "hypothesis", "httpx", "schemathesis>=4"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "pydantic>=2"],
        "logging": ["tensorboard", "matplotlib"],
        "eval": ["lm-eval>=0.4.2", "accelerate>=0.26"],  # lm-evaluation-harness and its hf backend
        "gguf": ["gguf>=0.19"],
        "peft": ["peft>=0.18"],  # loading our PEFT adapters with PEFT itself (tests); our conversion needs no peft
        "llamacpp": ["llama-cpp-python>=0.3"],  # compiles llama.cpp on install (about 10 minutes on 2 cores)
    },
)
