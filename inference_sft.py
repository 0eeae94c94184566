"""Answer arithmetic prompts with an SFT checkpoint (default checkpoints/sft/final).

    python inference_sft.py "What is 7 * 8? Answer with an integer."
    python inference_sft.py --ckpt checkpoints/tiny/sft/final "What is 12 - 7? Answer with an integer."
    echo "What is 3 + 4? Answer with an integer." | python inference_sft.py --ckpt DIR
    python inference_sft.py --ckpt DIR          # interactive

Same implementation as inference.py (mathrl/inference.py); the paper had two copies. Greedy by default.
"""

from mathrl.inference import run_inference
from mathrl.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda: run_inference("checkpoints/sft/final", __doc__.split("\n")[0]))
