"""The doorbell example through the Python API (same as `lowbit demo doorbell`)."""

from pathlib import Path

from lowbit.demo.doorbell import run_doorbell

if __name__ == "__main__":
    report = run_doorbell(Path("lowbit-demo/doorbell"), threads=(1,))
    print(report)
    for label, s in report.data["doorbell"].items():
        p = s["pairs"]
        print(f"{label:24s} mean cosine to dlib {s['mean_cos_to_dlib']:.5f}  pair decisions unlike dlib's "
              f"{p['differ']} of {p['pairs']} ({p['differ_genuine']} genuine, {p['differ_impostor']} impostor)  "
              f"door as dlib {s['door']['same_as_reference']}/{s['door']['rings']}")
