"""Answer arithmetic prompts with a GRPO checkpoint (default checkpoints/grpo/final).

    python inference.py "What is 7 * 8? Answer with an integer."
    python inference.py --ckpt checkpoints/tiny/grpo/final "What is 12 - 7? Answer with an integer."
    echo "What is 3 + 4? Answer with an integer." | python inference.py --ckpt DIR
    python inference.py --ckpt DIR          # interactive

Same implementation as inference_sft.py (mathrl/inference.py); the paper had two copies. Greedy by default.
"""

from mathrl.inference import run_inference
from mathrl.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda: run_inference("checkpoints/grpo/final", __doc__.split("\n")[0]))
