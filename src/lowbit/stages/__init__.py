"""The stages of one `lowbit.quantize` call that are more than a call into a subpackage: the job they
hand on (`job`) and the emit stage's choice of the form that ships (`emit`). `lowbit.api` composes them."""
