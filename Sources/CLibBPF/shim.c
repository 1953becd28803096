#include "clibbpf.h"
