// The Python module adjoined_kernels._C. It has no Python functions: importing it loads the library,
// whose static registrars (torch_bindings.cpp) add the adjoined::cuda_* ops to torch.ops.
// Built by setup.py only; the CMake build makes a plain shared library without Python.
#include <Python.h>

static struct PyModuleDef adjoined_c_module = {PyModuleDef_HEAD_INIT, "_C", "adjoined CUDA ops (torch.ops.adjoined.cuda_*)",
                                               -1, nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&adjoined_c_module); }
