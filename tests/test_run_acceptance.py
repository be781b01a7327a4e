"""Acceptance of issue 14: train with a deliberately bad init, record with the TensorBoard sink,
load the run file in a fresh process, build the report, and the report names the layer and
the step where the problem began. Once by hand (a small CNN), once through the transformers
Trainer (a tiny BERT built from config)."""
import html
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import initscope
from initscope.recorder import Recorder

pytest.importorskip("pyarrow")
sys.path.insert(0, os.path.dirname(__file__))  # the shared test data
from hf_tokens import Tokens  # noqa: E402
pytest.importorskip("tensorboard")
from initscope.runs import RunWriter, TensorBoardSink  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = str(Path(initscope.__file__).resolve().parents[1])


def _report_in_a_fresh_process(run_path: Path, out: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "initscope.cli", "report", str(run_path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": SRC, "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    return out.read_text(encoding="utf-8")


def _headline(page: str) -> str:
    """The first finding, as the page's summary lists it."""
    return html.unescape(re.search(r"<ul class=\"summary\"><li>(.*?)</li>", page).group(1))


def _cnn():
    layers = OrderedDict()
    for i, (cin, cout) in enumerate(((3, 8), (8, 8), (8, 8)), start=1):
        layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
    layers.update(pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), head=nn.Linear(8, 4))
    return nn.Sequential(layers)


def test_a_cnn_with_a_bad_init_names_the_layer_and_step_where_it_died(tmp_path):
    torch.manual_seed(0)
    net = _cnn()
    with torch.no_grad():  # the deliberately bad init: ten times PyTorch's default weights
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 3, 8, 8, generator=g), torch.randint(0, 4, (256,), generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sinks = [RunWriter(tmp_path / "run.parquet"), TensorBoardSink(tmp_path / "tb")]
    with Recorder(net, every=10, sinks=sinks) as rec:
        for _ in range(300):
            idx = torch.randint(0, 256, (16,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            rec.step()
    # the truth, from the Recorder itself: relu1 (the first ReLU) is alive at step 0, and from
    # step 10 on, at every recorded step to the end, over 90% of its outputs are zero
    zero = {r.step: r.value for r in rec.history if r.layer == "relu1" and r.phase == "forward" and r.stat == "zero_frac"}
    assert sorted(zero) == list(range(0, 300, 10))
    assert zero[0] < 0.9 and all(v >= 0.9 for s, v in zero.items() if s >= 10)
    page = _report_in_a_fresh_process(tmp_path / "run.parquet", tmp_path / "report.html")
    head = _headline(page)
    first = f"layer `relu1`'s activations went dead at step 10 and stayed dead: {zero[290]:.0%} of its units or " \
        "values zero at step 290"
    assert head == first or head.startswith(first + ", and likewise for "), head
    for name in re.findall(r"`([^`]+)`", head[len(first):]):  # layers said alike: dead from step 10 too
        dead = {r.step: r.value for r in rec.history if (r.layer, r.phase) == (name, "forward")
                and r.stat in ("zero_frac", "dead_frac") and r.value >= 0.9}
        assert 0 not in dead and set(range(10, 300, 10)) <= set(dead), name
    # one heatmap per layer (3 conv, 3 relu, pool, flatten, head), forward and backward
    assert page.count("<img") == 2 * 9 and page.count('<figure class="chart">') == 7
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("forward_zero_frac/relu1")}
    assert tb == {s: np.float32(v) for s, v in zero.items()}  # TensorBoard saw the same run



def test_the_transformers_trainer_with_a_bad_init_names_the_layer_and_step(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from initscope.integrations import InitscopeCallback

    # the deliberately bad init: initializer_range 3.0 (BERT's is 0.02) with ReLU
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2,
                                     initializer_range=3.0, hidden_act="relu")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    callback = InitscopeCallback(every=2, tensorboard=True)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=8,
                                          gradient_accumulation_steps=2, learning_rate=0.01, report_to=[],
                                          save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
                                          seed=0)
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(seq=8), callbacks=[callback]).train()
    out = tmp_path / "initscope"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    page = _report_in_a_fresh_process(out / "run.parquet", tmp_path / "again.html")
    head = _headline(page)
    m = re.fullmatch(r"fp16 would underflow (\d+)% or more of `([^`]+)`'s output gradients from step (\d+)"
                     r"(, and likewise for .*)?", head)
    assert m, head
    share, layer, step = int(m.group(1)), m.group(2), int(m.group(3))
    df = callback.session.run.to_pandas()  # the truth, from the run the callback recorded
    for name in re.findall(r"`([^`]+)`", m.group(4) or ""):  # layers said alike: from the same step
        alike = df[(df.layer == name) & (df.phase == "backward")].set_index("step").fp16_underflow
        assert (alike[alike.index >= step] >= 0.1).all() and (step == 0 or alike[alike.index < step].iloc[-1] < 0.1)
    rows = df[(df.layer == layer) & (df.phase == "backward")].set_index("step").fp16_underflow
    assert rows.index.tolist() == list(range(0, 20, 2))
    assert (rows[rows.index >= step] >= 0.1).all() and (step == 0 or rows[rows.index < step].iloc[-1] < 0.1)
    assert share == round(100 * rows[rows.index >= step].min())
    depth = df[df.phase == "backward"].layer.drop_duplicates().tolist()
    first = [n for n in depth if (df[(df.layer == n) & (df.phase == "backward")].fp16_underflow >= 0.1).all()]
    assert layer in first  # every layer that underflows from the start; the report names ...
    fwd_order = df[df.phase == "forward"].layer.drop_duplicates().tolist()
    assert fwd_order.index(layer) == min(fwd_order.index(n) for n in first)  # ... the first of them in depth
