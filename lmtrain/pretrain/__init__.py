"""Pretraining: the loop (train.py), evaluation (evaluate.py) and loss curves (curves.py).

    python -m lmtrain.pretrain.train --model gpt --config tiny --train-dir ... --eval-dir ... --out ...
"""
