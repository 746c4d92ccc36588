"""audit.malloc: the CLI keeps freed activation memory, so UNet steps stop re-faulting pages."""

import subprocess
import sys

import pytest

FORWARDS = """
import resource, sys, torch
from diffusers import UNet2DModel
if sys.argv[1] == "keep":
    from audit.malloc import keep_freed_memory
    assert keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
unet = UNet2DModel(sample_size=32, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8)
x = torch.randn(32, 3, 32, 32)
with torch.no_grad():
    for _ in range(2):  # warm-up: the kept heap grows to its peak here
        unet(x, 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        unet(x, 10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FORWARDS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_cuts_page_faults_of_repeated_unet_forwards():
    default, kept = page_faults("default"), page_faults("keep")
    assert kept * 4 < default, (kept, default)
