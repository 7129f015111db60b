# node-gyp build of the CPU engine and the addon, for machines without CMake: `npx node-gyp rebuild`.
# It mirrors CMakeLists.txt (same sources, defines, OpenMP, OpenBLAS when found) and also writes
# build/Release/optune.node. scripts/gyp-config.mjs answers the questions gyp cannot (globs, BLAS detection).
{
  "variables": {
    "optune_blas%": "<!(node scripts/gyp-config.mjs blas)",
    "optune_blas_include%": "<!(node scripts/gyp-config.mjs blas-include)",
    "optune_blas_lib_dir%": "<!(node scripts/gyp-config.mjs blas-lib-dir)",
    "optune_version%": "<!(node scripts/gyp-config.mjs version)"
  },
  "targets": [
    {
      "target_name": "optune",
      "sources": ["<!@(node scripts/gyp-config.mjs sources)"],
      "include_dirs": ["native", "<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_CPP_EXCEPTIONS_ALL",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "OPTUNE_VERSION=\"<(optune_version)\""
      ],
      # node-gyp's defaults turn C++ exceptions off; the engine reports bad input with them.
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++14", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-Wno-unused-parameter"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "GCC_ENABLE_CPP_RTTI": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "MACOSX_DEPLOYMENT_TARGET": "11.0"
      },
      "conditions": [
        ["OS=='linux'", {
          "cflags_cc": ["-fopenmp"],
          "ldflags": ["-fopenmp"]
        }],
        ["optune_blas=='openblas'", {
          "defines": ["OPTUNE_HAVE_CBLAS=1", "OPTUNE_BLAS_NAME=\"openblas\""],
          "include_dirs": ["<(optune_blas_include)"],
          # The rpath keeps the OpenMP build of OpenBLAS at run time too (Debian installs several).
          "libraries": ["-L<(optune_blas_lib_dir)", "-Wl,-rpath,<(optune_blas_lib_dir)", "-lopenblas"]
        }, {
          "defines": ["OPTUNE_BLAS_NAME=\"builtin\""]
        }]
      ]
    }
  ]
}
