/* The slice of the CUDA driver and NVML ABIs the shim touches: result codes, handle types and the
 * two NVML memory structs. Written from the public API reference so the shim builds without the
 * CUDA toolkit; structs whose fields we never read (CUmemAllocationProp) stay opaque. */
#ifndef BALDR_CUABI_H
#define BALDR_CUABI_H

#include <stddef.h>

typedef int CUresult;
#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_FOUND 500

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;      /* 64-bit on every platform we build for */
typedef unsigned long long cuuint64_t;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUmemAllocationProp_st CUmemAllocationProp;  /* passed through untouched */
typedef int CUdriverProcAddressQueryResult;

#define CU_DEVICE_ATTRIBUTE_INTEGRATED 18
#define CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT 5

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_NOT_SUPPORTED 3
typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

/* NVML versions a struct as its size with the version number in the top byte. */
#define NVML_MEMORY_V2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

#endif
