"""PyTorch implementation of the fused recurrence (see `keras_vrnn.fused`).

torch's own RNN kernel, the one `torch.nn.RNN` runs (cuDNN on an NVIDIA GPU;
on a CPU, ATen's loop after one input GEMM), called as Keras' LSTM calls
`torch._VF.lstm`. The Keras weights go in as they are: W_ih = kernel^T,
W_hh = recurrent_kernel^T, b_ih = bias, b_hh = 0.
"""

import torch

KERNELS = {"tanh": torch._VF.rnn_tanh, "relu": torch._VF.rnn_relu}


def recurrence_from_inputs(
    x, kernel, bias, h0, recurrent_kernel, act, rec_mask=None, probe=None,
    weight_gradients=True,
):
    """Same contract as `keras_vrnn.fused_tf.recurrence_from_inputs`, for `act` in
    `KERNELS`, without `rec_mask`. A probe: the state is h_t + p_t, and p_t reaches step
    t+1 as an extra input with weights U, so autograd's dL/dp_t is the total dL/dh_t."""
    if rec_mask is not None:
        raise ValueError("torch's RNN kernel takes no recurrent mask.")
    if probe is not None:
        x = torch.cat([x, torch.nn.functional.pad(probe[:, :-1], (0, 0, 1, 0))], -1)
        kernel = torch.cat([kernel, recurrent_kernel], 0)
    params = [kernel.T.contiguous(), recurrent_kernel.T.contiguous()]
    if bias is not None:
        params += [bias, torch.zeros_like(bias)]
    # (input, hx, params, has_biases, num_layers, dropout, train (cuDNN keeps
    # its workspace for the backward), bidirectional, batch_first). hx is a
    # copy: a stateful layer overwrites its state variable before the backward.
    outputs, _ = KERNELS[act](
        x, h0[None].clone(), params, bias is not None, 1, 0.0, torch.is_grad_enabled(), False, True)
    return outputs if probe is None else outputs + probe
