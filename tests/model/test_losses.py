import math

import torch

from aladin.model.losses import distillation_loss, hardest_negative_hinge_loss, infonce_loss

SCORES = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.8, 0.5]])  # 2 images × 3 captions
# captions 0 and 2 belong to image 0 (two positives), caption 1 to image 1
POSITIVES = torch.tensor([[True, False, True], [False, True, False]])


def _ce(pos: float, negatives: list[float]) -> float:
    return -pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negatives))


def test_infonce_matches_hand_computation():
    scale = 2.0
    s = (SCORES * scale).tolist()
    # image→text: each positive against the row's negatives only (the other positive is never a negative)
    i2t = [_ce(s[0][0], [s[0][1]]), _ce(s[0][2], [s[0][1]]), _ce(s[1][1], [s[1][0], s[1][2]])]
    # text→image: caption 0 → image 0 vs image 1, caption 1 → image 1 vs 0, caption 2 → image 0 vs 1
    t2i = [_ce(s[0][0], [s[1][0]]), _ce(s[1][1], [s[0][1]]), _ce(s[0][2], [s[1][2]])]
    expected = 0.5 * (sum(i2t) / 3 + sum(t2i) / 3)
    assert math.isclose(float(infonce_loss(SCORES, POSITIVES, scale)), expected, rel_tol=1e-6)


def test_hinge_uses_hardest_negative_both_directions():
    m = 0.2
    # pair (0,0): hardest wrong caption for image 0 = 0.2; hardest wrong image for caption 0 = 0.3
    # pair (0,2): 0.2 and 0.5 ; pair (1,1): hardest wrong caption for image 1 = max(0.3, 0.5) = 0.5, image 0.2
    costs = [
        max(0, m + 0.2 - 0.9) + max(0, m + 0.3 - 0.9),
        max(0, m + 0.2 - 0.1) + max(0, m + 0.5 - 0.1),
        max(0, m + 0.5 - 0.8) + max(0, m + 0.2 - 0.8),
    ]
    expected = sum(costs) / 3
    assert math.isclose(float(hardest_negative_hinge_loss(SCORES, POSITIVES, m)), expected, rel_tol=1e-6)


def test_distillation_kl_by_hand_and_teacher_detached():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    t = 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    s, te = student.tolist(), teacher.tolist()
    rows = sum(kl(softmax(te[i]), softmax(s[i])) for i in range(2)) / 2
    cols_s, cols_t = list(zip(*s, strict=True)), list(zip(*te, strict=True))
    cols = sum(kl(softmax(cols_t[i]), softmax(cols_s[i])) for i in range(2)) / 2
    expected = 0.5 * (rows + cols) * t * t
    loss = distillation_loss(student, teacher, temperature=t)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-5)
    loss.backward()
    assert student.grad is not None and teacher.grad is None
    assert float(distillation_loss(teacher.detach(), teacher.detach())) < 1e-7
