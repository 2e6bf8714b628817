"""The in-memory linear fit that bench_scale.py's out-of-core `train` is compared with (issue 12): the first N rows of
the scale data (= scale_N.parquet, same generator and seed) embedded
in numpy with the tiny backbone's own weights, held in memory; the same split and seed as `headstart train`.

    python benchmarks/bench_scale_in_memory.py 1000000   # after bench_scale.py --items 10000000 made the data
"""
import json, sys, time
import numpy as np, onnx, pyarrow.parquet as pq
from onnx import numpy_helper
import headstart
from headstart.engine.heads.features import FeatureSet
n = int(sys.argv[1])
m = onnx.load("benchmarks/.work/data/tiny16.onnx")
W = [numpy_helper.to_array(i) for i in m.graph.initializer]
print([w.shape for w in W], [nd.op_type for nd in m.graph.node], file=sys.stderr)
W = next(w for w in W if w.shape == (16, 384))
t = pq.read_table("benchmarks/.work/data/scale_10000000.parquet").slice(0, n)
x = np.asarray(t.column("x").combine_chunks().values).reshape(-1, 16)
X = x @ W
X /= np.linalg.norm(X, axis=1, keepdims=True)
y = t.column("label").to_pylist()
del t, x
fs = FeatureSet.from_arrays(X.astype(np.float32), y)
start = time.time()
r = headstart.train(fs, "linear")
acc_all = float(np.mean(np.asarray(r.model.head.predict(X.astype(np.float32))) == np.asarray(y, dtype=object)))
print(json.dumps({"items": n, "validation_accuracy": r.metrics["accuracy"], "accuracy_on_all": acc_all,
                  "fit_passes": r.model.manifest["training"].get("fit_passes"), "l2": r.model.head.l2_,
                  "seconds": round(time.time() - start, 1)}))
