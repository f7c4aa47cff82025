// The per-lane polynomials and recurrence steps of the scan: T is float, double or a SIMD vector
// of them (GCC / Clang vector extensions on the CPU); only + - * / are used, so one definition
// serves scalars and vectors. See hss_math.h for the notation.
//
// No include guard, on purpose: hss_math.h includes this file in namespace mambaad (the CUDA
// kernels, scalar code), and the CPU scan loops (cpu/simd.h) include it again inside each
// instruction set's namespace, after the translation unit has switched its target. Clang refuses a
// call that passes an AVX vector by value to a function compiled without AVX, even an always-inline
// one (GCC inlines it); the per-namespace copy carries its variant's target, so the vector code
// calls functions of its own instruction set under both compilers.
//
// Included inside a namespace: no #include here. Needs MAMBAAD_HD (hss_math.h).

// 2^f for f in [-1/2, 1/2] (float precision; T float or a float vector): a degree-6 polynomial
// fitted for relative error (2e-9 in exact arithmetic, under 1e-7 evaluated in float). The caller
// reduces the range: 2^y = 2^round(y) * 2^(y - round(y)).
template <typename T>
MAMBAAD_HD T exp2_reduced(T f) {
  T p = f * 1.53458124e-4f + 1.33999309e-3f;
  p = p * f + 9.61848907e-3f;
  p = p * f + 5.55032864e-2f;
  p = p * f + 2.40226462e-1f;
  p = p * f + 6.93147182e-1f;
  return p * f + 1.f;
}

// The same with a degree-5 polynomial, one multiply-add less (fitted for relative error: 9e-8 in
// exact arithmetic, 1.8e-7 evaluated in float). For the CPU backward's recomputation of the decays,
// where the operations per (t, n) step set the speed and rounding-level differences from the
// forward's states are far below the gradients' own rounding.
template <typename T>
MAMBAAD_HD T exp2_reduced_short(T f) {
  T p = f * 1.32646982e-3f + 9.67150927e-3f;
  p = p * f + 5.55073395e-2f;
  p = p * f + 2.40222424e-1f;
  p = p * f + 6.93147004e-1f;
  return p * f + 1.f;
}

// log(1 + e) for e in [0, 1] (float precision): with s = e / (2 + e) in [0, 1/3],
// log1p(e) = 2 atanh(s) = 2 s P(s^2), P a degree-4 polynomial fitted on [0, 1/9] (relative error
// 4e-9 exact, about 2e-7 in float). No cancellation for tiny e, unlike log(1 + e).
template <typename T>
MAMBAAD_HD T log1p_unit(T e) {
  const T s = e / (e + 2.f);
  const T v = s * s;
  T p = v * 1.40891671e-1f + 1.39803022e-1f;
  p = p * v + 2.00124547e-1f;
  p = p * v + 3.33331585e-1f;
  p = p * v + 1.f;
  return (s + s) * p;
}

// One recurrence step for one state lane given its decay = exp(delta A_n) and du = delta * u:
// returns h_t = decay * h_{t-1} + du * B_n.
template <typename T, typename S>
MAMBAAD_HD T step_decayed(T h_prev, T decay, T du, S b) {
  return decay * h_prev + du * b;
}

// Reverse-mode derivative of the step for one state lane n at step t (tests/kernel_contract.py).
// In: g = dL/dy_t, c = C_t[n], decay = exp(delta_t A_n), h_prev = h_{t-1}[n].
// dh: on entry decay_{t+1} * dh_{t+1} (zero after the last step); on exit decay_t * dh_t, the
// carry for step t - 1. Returns dh_t = dL/dh_t and sets q = dh_t * decay * h_prev. The caller
// accumulates, with u = u_t, delta = delta_t:
//   dB_t[n] += dh_t delta u;   dC_t[n] += g h_t;   du_t += delta dh_t B_t[n];
//   ddelta_t += A_n q + u dh_t B_t[n];   dA_n += delta q   (then dA_logs = A dA).
template <typename T, typename S>
MAMBAAD_HD T step_backward(T& dh, T g, S c, T decay, T h_prev, T& q) {
  const T dh_t = dh + g * c;
  q = dh_t * decay * h_prev;
  dh = dh_t * decay;
  return dh_t;
}
