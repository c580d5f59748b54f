/* The one version of the project: modules, packages (debian/changelog must
 * agree: scripts/package.sh checks) and metrics (certgate_build_info). */
#ifndef CG_VERSION_H
#define CG_VERSION_H
#define CG_VERSION "0.9.0"
#endif
