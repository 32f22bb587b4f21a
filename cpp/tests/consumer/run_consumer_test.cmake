# ctest driver (cmake -P): install the build tree into a scratch prefix, configure and build the
# consumer project against it, then run the consumer and the installed pidtrt-decode.
file(REMOVE_RECURSE ${WORK_DIR})
set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix ${config_args}
  COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE} -B ${WORK_DIR}/build -G ${GENERATOR}
  -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_C_COMPILER=${C_COMPILER}
  COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build ${config_args} COMMAND_ERROR_IS_FATAL ANY)
file(GLOB_RECURSE consumer_exe ${WORK_DIR}/build/consumer ${WORK_DIR}/build/consumer.exe)
execute_process(COMMAND ${consumer_exe} ${FIXTURE} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${WORK_DIR}/prefix/bin/pidtrt-decode --print-schedule ${FIXTURE}
  OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)
