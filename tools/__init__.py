"""qc's Python tools: the generators of the committed fixtures and the PyTorch bridge.

One package, run from the repository root as ``python -m tools.<module>`` (torch and friends
in a virtual environment outside the repository: tools/qir_bridge/requirements*.txt). qc
itself never needs Python, and ``cargo test`` reads only the committed files.

Shared modules:

* ``fileio`` — the file formats: safetensors, .npy / .npz writing (deterministic), the QIR
  text reader;
* ``qir_bridge`` — the FX -> QIR exporter (the only one), ``python -m tools.qir_bridge
  {export,parity}``, and the PT2E parity harness.

Fixture generators (each module's docstring says what it writes and how it is checked):

* ``gen_golden`` — tests/golden (the interpreter against PyTorch eager);
* ``gen_batch_norm_fixtures`` — tests/batch_norm;
* ``gen_observer_fixtures`` — tests/observers;
* ``gen_fuse_fixtures`` — tests/fuse_conv_bn and tests/passes/fuse-conv-bn/weights.safetensors;
* ``gen_pt2e_fixtures``, ``gen_convert_fixtures`` — tests/pt2e (the second runs the first);
* ``gen_qat_fixtures`` — tests/qat;
* ``gen_x86_fixtures`` — tests/x86/*.json (the .qir files there are hand-written);
* ``gen_example_weights``, ``gen_calibration_data`` — the hand-written examples' weights and
  calibration data (standard library only);
* ``train_digits`` — examples/digits_cnn.* (trains the model; scikit-learn's digits).

``bench_pytorch`` times PyTorch eager on the shapes of benches/interp.rs.
"""
